rule report:
    input:
        expand("results/metrics/{experiment}.json", experiment=EXPERIMENTS),
        expand("work/train/{experiment}/train_log.tsv", experiment=EXPERIMENTS),
        expand("work/eval/{experiment}/recon_samples.npy", experiment=EXPERIMENTS),
        expand("work/eval/{experiment}/code_counts.npy", experiment=EXPERIMENTS),
        "results/metrics/vae.json",
        "work/eval/vae/recon_samples.npy",
        "references/reported.csv",
        "work/prepared",
    output:
        table="results/table1.csv",
        ablation="results/ablation.csv",
        figures=directory("results/figures"),
        readme="results/README.md",
    params: values=tracked("report"), scale=SCALE
    log: "logs/report.log"
    conda: "../envs/coda.yaml"
    shell: "coda report --scale {params.scale} --metrics results/metrics --reported references/reported.csv --prepared work/prepared --train work/train --eval work/eval --out results --log logs/report.log"
