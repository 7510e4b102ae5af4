# evaluate: DSC, HD95, HD, ASSD per label; folding, SDlogJ, TRE, CC, runtime per pair.
rule evaluate:
    input:
        reg="work/{experiment}/reg/{dataset}/{method}/fold{fold}/pairs.tsv",
        cases="data/prep/{experiment}/{dataset}/cases.tsv",
    output:
        "results/{experiment}/metrics/{dataset}/{method}/fold{fold}.tsv",
    params:
        prep=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
        reg=lambda w: f"work/{w.experiment}/reg/{w.dataset}/{w.method}/fold{w.fold}",
        spec=lambda w: spec_json({
            "dataset": w.dataset, "method_id": w.method, "method_name": method_cfg(w)["name"],
            "labels": dataset_cfg(w)["labels"], "modality": fixed_column(dataset_cfg(w)["modality"]),
            "unit": dataset_cfg(w)["unit"], "seg": dataset_cfg(w)["seg"],
        }),
    log:
        "logs/{experiment}/evaluate/{dataset}/{method}/fold{fold}.log",
    benchmark:
        "benchmarks/{experiment}/evaluate/{dataset}/{method}/fold{fold}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "regbench evaluate --prep {params.prep} --reg {params.reg} --out {output} --fold {wildcards.fold}"
        " --spec {params.spec:q} > {log} 2>&1"


# evaluate_aux: an auxiliary network on the test cases (He et al. 2022, Tables 2-3: DSC, HD, ASSD).
rule evaluate_aux:
    input:
        model="work/{experiment}/aux/{dataset}/{aux}/fold{fold}/model.pt",
        cases="data/prep/{experiment}/{dataset}/cases.tsv",
    output:
        "results/{experiment}/aux/{dataset}/{aux}/fold{fold}.tsv",
    params:
        prep=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
        spec=lambda w: spec_json({
            "dataset": w.dataset, "aux_id": w.aux, "aux_name": exp(w)["auxiliary"][w.aux]["name"],
            "modality": dataset_cfg(w)["modality"], "seg": dataset_cfg(w)["seg"],
            "train_seg": dataset_cfg(w)["train_seg"], "device": exp(w)["device"],
        }),
    log:
        "logs/{experiment}/evaluate_aux/{dataset}/{aux}/fold{fold}.log",
    benchmark:
        "benchmarks/{experiment}/evaluate_aux/{dataset}/{aux}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "regbench evaluate-aux --prep {params.prep} --model {input.model} --out {output} --fold {wildcards.fold}"
        " --spec {params.spec:q} > {log} 2>&1"
