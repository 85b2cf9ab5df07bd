#!/usr/bin/env bash
# Train the tiny Stable Diffusion (issue 8), stage by stage, from the repository root:
#
#   experiments/tiny_sd/train.sh [LightningCLI options for every stage]
#   experiments/tiny_sd/train.sh --trainer.accelerator cpu --trainer.max_steps 200   # a CPU try
#
# Stages, in order (configs next to this file): vae -> vae_anneal (the same VAE trained on with
# a decaying learning rate) -> unet (+ text encoder) -> unet_anneal (likewise) -> controlnet.
# Each writes checkpoints under runs/tiny_sd/<stage>/checkpoints and, when it ends, its export
# under runs/tiny_sd/export/ (vae/, pipeline/, controlnet_depth/: the diffusers layout that
# pilot.load_pipeline and pilot.load_controlnet read). Run it again after an interruption: a
# stage with a last.ckpt resumes from it (one that had finished only re-exports), one stopped
# before its first checkpoint starts over (the frames of its timelapse are deleted: no steps
# of it can be resumed), and the next stages read the exports of the previous ones.
# STAGES="unet controlnet" runs a subset. A stage trained against an earlier export than the
# one there now (after a CPU try: the VAE was trained on) refuses to resume: delete its folder
# under runs/tiny_sd/ to train it afresh. After a CPU try, delete runs/tiny_sd/vae_anneal too:
# it would resume its own short run, started from the try's VAE, instead of the full one.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/tiny_sd
for stage in ${STAGES:-vae vae_anneal unet unet_anneal controlnet}; do
    resume=()
    last="runs/tiny_sd/${stage}/checkpoints/last.ckpt"
    timelapse="runs/tiny_sd/${stage}/timelapse"
    if [[ -f "$last" ]]; then
        resume=(--ckpt_path "$last")
    elif [[ -d "$timelapse" ]]; then
        echo "== ${stage}: no checkpoint to resume, so its timelapse starts over: deleting ${timelapse}"
        rm -rf -- "$timelapse"
    fi
    echo "== tiny SD stage: ${stage} ${resume[*]:-}"
    system="tiny_sd_${stage%_anneal}"  # a *_anneal stage is its system again
    python -m train.cli "$system" fit --config "${here}/${stage}.yaml" "${resume[@]}" "$@"
done
echo "== done: runs/tiny_sd/export/{vae,pipeline,controlnet_depth}"
