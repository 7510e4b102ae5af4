# report: tables (md/csv/tex, paper value beside ours where the paper has one) and figures per experiment.
def report_inputs(w):
    e = EXPERIMENTS[w.experiment]
    metrics = [f"results/{w.experiment}/metrics/{d}/{m}/fold{f}.tsv" for d, m, f in jobs(e)]
    regs = [f"work/{w.experiment}/reg/{d}/{m}/fold{f}/pairs.tsv" for d, m, f in jobs(e)]
    infos = [f"work/{w.experiment}/models/{d}/{m}/fold{f}/train_info.json"
             for d, m, f in jobs(e) if e["methods"][m]["kind"] == "learned"]
    return {"metrics": metrics, "regs": regs, "infos": infos}


rule report:
    input:
        unpack(report_inputs),
    output:
        [f"results/{{experiment}}/{f}" for f in REPORT_FILES],
    params:
        spec=lambda w: spec_json(EXPERIMENTS[w.experiment]),
    log:
        "logs/{experiment}/report.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "regbench report --spec {params.spec:q} --out-dir results/{wildcards.experiment}"
        " {input.metrics} > {log} 2>&1"
