r"""Converts torchvision ResNet/VGG weights to an .npz of torchvision-named arrays, checked against the Flax model.

  python -m data_prep.convert_weights --in=resnet18.pth --arch=resnet18 --out=resnet18.npz

--in may be a `torch.save`d state dict (.pth/.pt, read without torch and without executing pickled code, see
cqd_jax/pretrained.py) or a .safetensors file. Train with `init_from=<the .npz, .safetensors or .pth>`.

This machine needs neither torch nor network access. To make the weights file, on a machine with torchvision:

  import safetensors.torch, torchvision
  safetensors.torch.save_file(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(),
                              "resnet18.safetensors")

(resnet50: `torchvision.models.resnet50(weights="IMAGENET1K_V2")`, or "IMAGENET1K_V1" for the original
recipe; vgg16: `torchvision.models.vgg16(weights="IMAGENET1K_V1")`). torchvision's downloaded
`~/.cache/torch/hub/checkpoints/resnet18-*.pth` also works as --in.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from cqd_jax import fileio
from cqd_jax import models
from cqd_jax import pretrained

_IN = flags.DEFINE_string("in", None, "State dict to convert (.pth/.pt/.safetensors/.npz).", required=True)
_ARCH = flags.DEFINE_enum("arch", None, pretrained.SUPPORTED_ARCHS, "Architecture to check against.",
                          required=True)
_OUT = flags.DEFINE_string("out", None, "The .npz to write.", required=True)


def convert(in_path: str, arch: str, out_path: str) -> dict[str, np.ndarray]:
  """Loads `in_path`, checks it fits `arch` (head included if present), and writes it atomically to `out_path`."""
  # .npz has no bfloat16: store such arrays as float32.
  state_dict = {key: value.astype(np.float32) if value.dtype == jnp.bfloat16 else value
                for key, value in pretrained.load_state_dict(in_path).items()}
  head = pretrained.head_key(arch)
  keep_head = head in state_dict
  model = models.get_model(arch, state_dict[head].shape[0] if keep_head else 1)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  pretrained.to_flax(state_dict, arch, template, keep_head=keep_head)
  with fileio.atomic_path(out_path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, allow_pickle=False, **state_dict)
  return state_dict


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    state_dict = convert(_IN.value, _ARCH.value, _OUT.value)
  except (pretrained.WeightsError, OSError) as e:
    sys.exit(f"error: {e}")
  num_values = sum(v.size for v in state_dict.values())
  print(f"{_OUT.value}: {len(state_dict)} arrays, {num_values:,} values ({_ARCH.value})")


if __name__ == "__main__":
  app.run(main)
