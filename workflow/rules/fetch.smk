# fetch: download (pooch) or ingest a local archive/folder, or locate package data; verify hashes.
rule fetch:
    output:
        "data/raw/{dataset}/FETCHED.json",
    params:
        registry=lambda w: next(iter(EXPERIMENTS.values()))["registry"],
        local=lambda w: local_path_arg(w.dataset),
    log:
        "logs/fetch/{dataset}.log",
    conda:
        "../../envs/fetch.yaml"
    shell:
        "regbench fetch {wildcards.dataset} --registry {params.registry} --raw-root data/raw {params.local}"
        " > {log} 2>&1"
