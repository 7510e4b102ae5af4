# register: every test pair of a fold with a learned model or a classical baseline.
rule register:
    input:
        unpack(register_inputs),
    output:
        "work/{experiment}/reg/{dataset}/{method}/fold{fold}/pairs.tsv",
    params:
        prep=lambda w: f"data/prep/{w.experiment}/{w.dataset}",
        out=lambda w: f"work/{w.experiment}/reg/{w.dataset}/{w.method}/fold{w.fold}",
        model=lambda w, input: aux_args(input, ("model", "attention")),
        spec=lambda w: spec_json({
            "method": method_cfg(w), "seed": exp(w)["seed"] + int(w.fold),
            "modality": dataset_cfg(w)["modality"], "seg": dataset_cfg(w)["seg"], "device": exp(w)["device"],
            "max_pairs": exp(w)["scale"].get("max_test_pairs"),
            **method_pairs_cap(w), **moving_seg_spec(w, train=False),
        }),
    resources:
        gpu=lambda w: 1 if method_cfg(w)["kind"] == "learned" else 0,
    log:
        "logs/{experiment}/register/{dataset}/{method}/fold{fold}.log",
    benchmark:
        "benchmarks/{experiment}/register/{dataset}/{method}/fold{fold}.tsv"
    conda:
        lambda w: "../../envs/torch.yaml" if method_cfg(w)["kind"] == "learned" else "../../envs/ants.yaml"
    shell:
        "regbench register --prep {params.prep} --out {params.out} --fold {wildcards.fold} {params.model}"
        " --spec {params.spec:q} > {log} 2>&1"
