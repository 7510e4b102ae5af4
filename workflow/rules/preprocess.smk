# preprocess: canonical NIfTI per case, cases.tsv and the pairs/folds table every later stage reads.
rule preprocess:
    input:
        lambda w: f"data/raw/{raw_of(exp(w), w.dataset)}/FETCHED.json",
    output:
        cases="data/prep/{experiment}/{dataset}/cases.tsv",
        pairs="data/prep/{experiment}/{dataset}/pairs.tsv",
    params:
        spec=lambda w: spec_json(_store.prep_spec(exp(w), w.dataset)),
        raw=lambda w: f"data/raw/{raw_of(exp(w), w.dataset)}",
        out=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
    log:
        "logs/{experiment}/preprocess/{dataset}.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "regbench preprocess --raw {params.raw} --out {params.out} --spec {params.spec:q} > {log} 2>&1"
