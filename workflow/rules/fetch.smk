import shlex


# fetch: download (pooch) or ingest a local archive/folder, or locate package data; verify hashes.
def local_path_arg(dataset):
    """`--local-path P` when an experiment sets datasets.<dataset>.local_path, else nothing."""
    for e in EXPERIMENTS.values():
        p = e["datasets"].get(dataset, {}).get("local_path")
        if p:
            return "--local-path " + shlex.quote(p)
    return ""


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
