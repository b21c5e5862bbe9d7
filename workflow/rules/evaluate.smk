rule evaluate:
    input: "work/prepared", "work/vae", "work/train/{experiment}/tokenizer"
    output:
        metrics="results/metrics/{experiment}.json",
        samples="work/eval/{experiment}/recon_samples.npy",
        counts="work/eval/{experiment}/code_counts.npy",
    params: values=tracked("evaluate"), scale=SCALE
    log: "logs/evaluate/{experiment}.log"
    benchmark: "logs/benchmarks/evaluate/{experiment}.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: "coda evaluate --scale {params.scale} --experiment {wildcards.experiment} --prepared work/prepared --vae work/vae --tokenizer work/train/{wildcards.experiment}/tokenizer --out results/metrics/{wildcards.experiment}.json --samples work/eval/{wildcards.experiment} --log logs/evaluate/{wildcards.experiment}.log"

# The continuous VAE itself, no quantizer: the ceiling row.
rule evaluate_vae:
    input: "work/prepared", "work/vae"
    output:
        metrics="results/metrics/vae.json",
        samples="work/eval/vae/recon_samples.npy",
    params: values=tracked("evaluate_vae"), scale=SCALE
    log: "logs/evaluate/vae.log"
    benchmark: "logs/benchmarks/evaluate/vae.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: "coda evaluate --scale {params.scale} --experiment vae --prepared work/prepared --vae work/vae --out results/metrics/vae.json --samples work/eval/vae --log logs/evaluate/vae.log"
