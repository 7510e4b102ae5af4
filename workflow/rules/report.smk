# report: tables (md/csv/tex, paper value beside ours where the paper has one) and figures, one rule per
# experiment because experiments differ in their extra tables and figures (report.tables / report.figures).
for _name in EXPERIMENTS:
    _inputs = report_inputs(_name)

    rule:
        name:
            report_rule(_name)
        input:
            **_inputs,
        output:
            report_items(_name),
        params:
            spec=spec_json(EXPERIMENTS[_name]),
            out_dir=lambda w, output: os.path.dirname(output[0]),
            aux=" ".join(["--aux-metrics", *_inputs["aux"], "--"]) if _inputs["aux"] else "",
        log:
            f"logs/{_name}/report.log",
        conda:
            "../../envs/report.yaml"
        shell:
            "regbench report --spec {params.spec:q} --out-dir {params.out_dir}"
            " {params.aux} {input.metrics} > {log} 2>&1"
