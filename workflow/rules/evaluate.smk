rule evaluate:
    input: f"{WORK}/prepared", f"{WORK}/vae", f"{WORK}/train/{{experiment}}/tokenizer", code("evaluate")
    output: directory(f"{WORK}/eval/{{experiment}}")
    params: values=tracked("evaluate")
    log: f"{LOGS}/evaluate/{{experiment}}.log"
    benchmark: f"{LOGS}/benchmarks/evaluate/{{experiment}}.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda evaluate --scale {SCALE} --experiment {{wildcards.experiment}} --prepared {WORK}/prepared --vae {WORK}/vae --tokenizer {WORK}/train/{{wildcards.experiment}}/tokenizer --out {WORK}/eval/{{wildcards.experiment}} --log {LOGS}/evaluate/{{wildcards.experiment}}.log"

# The continuous VAE itself, no quantizer: the ceiling row.
rule evaluate_vae:
    input: f"{WORK}/prepared", f"{WORK}/vae", code("evaluate_vae")
    output: directory(f"{WORK}/eval/vae")
    params: values=tracked("evaluate_vae")
    log: f"{LOGS}/evaluate/vae.log"
    benchmark: f"{LOGS}/benchmarks/evaluate/vae.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda evaluate --scale {SCALE} --experiment vae --prepared {WORK}/prepared --vae {WORK}/vae --out {WORK}/eval/vae --log {LOGS}/evaluate/vae.log"
