# The coda pipeline for Snakemake. dvc.yaml declares the same stages with the same commands;
# tests/test_pipeline.py keeps the two identical.
#   snakemake --cores all results/table1.csv                       (demo scale, 2 CPU cores)
#   snakemake --cores all results/table1.csv --config scale=imagenet
import sys

from snakemake.utils import validate

configfile: "params.yaml"
validate(config, "workflow/schemas/params.schema.yaml")

include: "workflow/rules/common.smk"

wildcard_constraints:
    experiment="|".join(EXPERIMENTS),

include: "workflow/rules/fetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"

# The token files of pipeline.tokenize's experiments: `snakemake --cores all tokens`.
rule tokens:
    input: expand(f"{WORK}/tokens/{{experiment}}/manifest.json", experiment=config["pipeline"].get("tokenize", []))

# Everything (the default target): the tables and the token files.
rule all:
    default_target: True
    input: "results/table1.csv", rules.tokens.input

# Datasets and weights the pipeline cannot make: refused all at once, before the first job (a dry
# run still plans without them); weights the fetch stage can download count as there while the
# network is. DVC runs the same check at the start of every `coda` command.
onstart:
    from coda.external_inputs import MissingInputsError, check_external_inputs
    try:
        check_external_inputs(config)
    except MissingInputsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
