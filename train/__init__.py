"""Lightning training systems, data modules and callbacks for Diffusion Pilot's small GANs.

`train` imports lightning (and wandb when present); `pilot` never imports `train`, except the
`pilot train` command, lazily.
"""
