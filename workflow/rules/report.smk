# report: tables (md/csv/tex, paper value beside ours where the paper has one) and figures per experiment.
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
