# regbench: fetch -> preprocess -> train -> register -> evaluate -> report, for every experiment in the
# config (config/config.yaml lists experiment files; config/demo.yaml is one experiment inline).
# Rules are thin: each calls one `regbench` subcommand; all logic lives in src/regbench.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_report_outputs(),
    default_target: True
