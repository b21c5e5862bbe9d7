# Cheap: the tables, figures and DVC's views (metrics numbers, curves) of the current scale.
# `snakemake --report results/report.html` bundles the report() outputs into one HTML file.
rule report:
    input:
        expand(f"{WORK}/train/{{experiment}}/train_log.tsv", experiment=EXPERIMENTS),
        expand(f"{WORK}/eval/{{experiment}}", experiment=EXPERIMENTS + ["vae"]),
        f"{WORK}/prepared",
        "references/reported.csv",
        code("report"),
    output:
        table=report("results/table1.csv", caption="../report/table1.rst", category="Tables"),
        ablation=report("results/ablation.csv", caption="../report/ablation.rst", category="Tables"),
        figures=report(directory("results/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
                       category="Figures"),
        readme="results/README.md",
        metrics=directory("results/metrics"),
        provenance=directory("results/provenance"),
        curves=directory("results/curves"),
        model_cards=directory("results/model_cards"),
    params: values=tracked("report")
    log: f"{LOGS}/report.log"
    threads: THREADS
    conda: "../envs/coda.yaml"
    shell: f"coda report --scale {SCALE} --reported references/reported.csv --prepared {WORK}/prepared --train {WORK}/train --eval {WORK}/eval --out results --log {LOGS}/report.log"
