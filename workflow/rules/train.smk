# train: one learned model per (dataset, method, fold); a GPU job when one is present, CPU otherwise.
rule train:
    input:
        unpack(train_inputs),
    output:
        model="work/{experiment}/models/{dataset}/{method}/fold{fold}/model.pt",
        info="work/{experiment}/models/{dataset}/{method}/fold{fold}/train_info.json",
    params:
        prep=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
        out=lambda w: f"work/{w.experiment}/models/{w.dataset}/{w.method}/fold{w.fold}",
        spec=lambda w: spec_json({
            "method": method_cfg(w), "seed": exp(w)["seed"] + int(w.fold),
            "modality": dataset_cfg(w)["train_modality"], "seg": dataset_cfg(w)["train_seg"],
            "labels": sorted(dataset_cfg(w)["labels"]),
            "device": exp(w)["device"], "max_steps": exp(w)["scale"].get("max_train_steps"),
            **moving_seg_spec(w, train=True),
        }),
        aux=lambda w, input: aux_args(input, ("attention",)),
    resources:
        gpu=1,
    threads: train_threads()
    log:
        "logs/{experiment}/train/{dataset}/{method}/fold{fold}.log",
    benchmark:
        "benchmarks/{experiment}/train/{dataset}/{method}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "regbench train --prep {params.prep} --out {params.out} --fold {wildcards.fold} {params.aux}"
        " --spec {params.spec:q} > {log} 2>&1"


# train_aux: an auxiliary network (He et al. 2022 attention segmenter, label auto-encoder) per (dataset, fold).
rule train_aux:
    input:
        cases="data/prep/{experiment}/{dataset}/cases.tsv",
        pairs="data/prep/{experiment}/{dataset}/pairs.tsv",
    output:
        model="work/{experiment}/aux/{dataset}/{aux}/fold{fold}/model.pt",
        info="work/{experiment}/aux/{dataset}/{aux}/fold{fold}/train_info.json",
    params:
        prep=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
        out=lambda w: f"work/{w.experiment}/aux/{w.dataset}/{w.aux}/fold{w.fold}",
        spec=lambda w: spec_json({
            "aux": exp(w)["auxiliary"][w.aux], "seed": exp(w)["seed"] + int(w.fold),
            "modality": dataset_cfg(w)["train_modality"], "seg": dataset_cfg(w)["train_seg"],
            "labels": sorted(dataset_cfg(w)["labels"]),
            "device": exp(w)["device"], "max_steps": exp(w)["scale"].get("max_train_steps"),
        }),
    resources:
        gpu=1,
    threads: train_threads()
    log:
        "logs/{experiment}/train_aux/{dataset}/{aux}/fold{fold}.log",
    benchmark:
        "benchmarks/{experiment}/train_aux/{dataset}/{aux}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "regbench train-aux --prep {params.prep} --out {params.out} --fold {wildcards.fold}"
        " --spec {params.spec:q} > {log} 2>&1"
