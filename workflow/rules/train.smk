# train: one network per training spec, in the store (work/models/<key>/<budget>, src/regbench/store.py): experiments
# that train the same network share this job; a GPU job when one is present, CPU otherwise. link_model makes it
# visible at work/<experiment>/models/<dataset>/<method>/fold<k>, the path every later stage reads.
rule train:
    input:
        unpack(lambda w: store_train_inputs(w, "models")),
    output:
        model="work/models/{key}/{budget}/model.pt",
        info="work/models/{key}/{budget}/train_info.json",
    params:
        prep=lambda w: STORE.prep_dir(store_run(w, "models")),
        run_dir=lambda w: store_run(w, "models").run_dir,
        out=lambda w: store_run(w, "models").out_dir,
        fold=lambda w: store_run(w, "models").owner[3],
        spec=lambda w: spec_json(store_run(w, "models").spec),
        aux=lambda w, input: aux_args(input, ("attention",)),
    resources:
        gpu=1,
    threads: train_threads()
    log:
        "logs/models/{key}/{budget}.log",
    benchmark:
        "benchmarks/models/{key}/{budget}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "regbench train --prep {params.prep} --out {params.out} --run-dir {params.run_dir} --fold {params.fold}"
        " {params.aux} --spec {params.spec:q} > {log} 2>&1"


# train_aux: an auxiliary network (He et al. 2022 attention segmenter, label auto-encoder), in the store too.
rule train_aux:
    input:
        unpack(lambda w: store_train_inputs(w, "aux")),
    output:
        model="work/aux/{key}/{budget}/model.pt",
        info="work/aux/{key}/{budget}/train_info.json",
    params:
        prep=lambda w: STORE.prep_dir(store_run(w, "aux")),
        run_dir=lambda w: store_run(w, "aux").run_dir,
        out=lambda w: store_run(w, "aux").out_dir,
        fold=lambda w: store_run(w, "aux").owner[3],
        spec=lambda w: spec_json(store_run(w, "aux").spec),
    resources:
        gpu=1,
    threads: train_threads()
    log:
        "logs/aux/{key}/{budget}.log",
    benchmark:
        "benchmarks/aux/{key}/{budget}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "regbench train-aux --prep {params.prep} --out {params.out} --run-dir {params.run_dir} --fold {params.fold}"
        " --spec {params.spec:q} > {log} 2>&1"


# link_model / link_aux: an experiment's view of a store network (hard links, and train_info.json with the
# experiment's own method name and the store path).
rule link_model:
    input:
        model=lambda w: experiment_run(w, "models").model,
    output:
        model="work/{experiment}/models/{dataset}/{method}/fold{fold}/model.pt",
        info="work/{experiment}/models/{dataset}/{method}/fold{fold}/train_info.json",
    params:
        src=lambda w: experiment_run(w, "models").out_dir,
        dst=lambda w, output: os.path.dirname(output.model),
        name=lambda w: method_cfg(w)["name"],
    localrule: True
    log:
        "logs/{experiment}/link/{dataset}/{method}/fold{fold}.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "regbench link-run --src {params.src} --dst {params.dst} --name {params.name:q} > {log} 2>&1"


rule link_aux:
    input:
        model=lambda w: experiment_run(w, "aux").model,
    output:
        model="work/{experiment}/aux/{dataset}/{aux}/fold{fold}/model.pt",
        info="work/{experiment}/aux/{dataset}/{aux}/fold{fold}/train_info.json",
    params:
        src=lambda w: experiment_run(w, "aux").out_dir,
        dst=lambda w, output: os.path.dirname(output.model),
        name=lambda w: exp(w)["auxiliary"][w.aux]["name"],
    localrule: True
    log:
        "logs/{experiment}/link_aux/{dataset}/{aux}/fold{fold}.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "regbench link-run --src {params.src} --dst {params.dst} --name {params.name:q} > {log} 2>&1"
