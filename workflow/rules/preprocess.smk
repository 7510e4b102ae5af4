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


# preprocess_train: the data a network trains on, addressed by its preprocessing spec without the test-only
# parameters (data/prep_train/<pid>, regbench.store.RunStore.prep_dir): every experiment that trains the network
# reads this one folder, so an experiment that changes only its test pairs never retrains it.
rule preprocess_train:
    input:
        lambda w: f"data/raw/{STORE.train_prep(w.pid)['raw']}/FETCHED.json",
    output:
        cases="data/prep_train/{pid}/cases.tsv",
        pairs="data/prep_train/{pid}/pairs.tsv",
    params:
        spec=lambda w: spec_json(STORE.train_prep(w.pid)["spec"]),
        raw=lambda w: f"data/raw/{STORE.train_prep(w.pid)['raw']}",
        out=lambda w: f"data/prep_train/{w.pid}",
    log:
        "logs/prep_train/{pid}.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "regbench preprocess --raw {params.raw} --out {params.out} --spec {params.spec:q} > {log} 2>&1"
