"""A PixelCNN++ density model (Salimans et al. 2017) for Bad GAN's low-density penalty (Dai et al. 2017,
docs/method.md sec. 2.5), after the architecture of ssl_bad_gan's ``pixelcnn.py`` and its single-channel
discretized logistic mixture likelihood (``pixelcnn_loss.py:68-127``).

Kept from the official model: the down-shifted (u) and down-right-shifted (ul) streams, gated resnet blocks
with concat_elu and a sigmoid gate, ``nr_resnet`` blocks per resolution, stride-2 down-sampling on the up pass
and transposed convolutions on the down pass with the skip connections (ul's skips take [u, ul]), a
mixture of ``nr_mix`` discretized logistics per pixel, images in [-1, 1] with 256 levels. The MNIST
settings are ``nr_filters=160, nr_resnet=3, nr_mix=10``, two resolutions (``disable_third=True``), no dropout
(``mnist_trainer.py:39``, ``config.py:119-124``: Adam lr 2e-4, batch 40).
Cut: only one channel (grey images, what Bad GAN uses it for); weight normalisation is torch's
reparametrisation without the data-dependent initialisation (the official training script was never
released, ssl_bad_gan#2, so its initialisation is unknown).
"""

from __future__ import annotations

import io
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .config import Config, ConfigError
from .data import load_data
from .rundir import atomic_create, make_dir


def concat_elu(x: Tensor) -> Tensor:
    """elu([x, -x]) along the channels: twice the channels (pixelcnn.py:9-10)."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: Tensor) -> Tensor:
    """Shift the rows down by one, zero on top: a pixel never sees its own row from the u stream."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Shift the columns right by one, zero on the left."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv(nn.Module):
    """A convolution that sees only rows above (and the centred columns): pad left/right (k_w - 1) / 2 and
    top k_h - 1 (pixelcnn.py:28-35); ``right=True``: the down-right-shifted form, pad left k_w - 1 (47-54)."""

    def __init__(self, c_in: int, c_out: int, kernel=(2, 3), stride: int = 1, right: bool = False) -> None:
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0) if right else ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)
        self.conv = weight_norm(nn.Conv2d(c_in, c_out, kernel, stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class DownShiftedDeconv(nn.Module):
    """The transposed form, cropped back to the causal window (pixelcnn.py:37-45, 56-64)."""

    def __init__(self, c_in: int, c_out: int, kernel=(2, 3), right: bool = False) -> None:
        super().__init__()
        self.kernel, self.right = kernel, right
        self.deconv = weight_norm(nn.ConvTranspose2d(c_in, c_out, kernel, 2, output_padding=1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.deconv(x)
        kh, kw = self.kernel
        h, w = x.shape[2], x.shape[3]
        if self.right:
            return x[:, :, :h - kh + 1, :w - kw + 1]
        return x[:, :, :h - kh + 1, (kw - 1) // 2:w - (kw - 1) // 2]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip))))
    (pixelcnn.py:74-89)."""

    def __init__(self, filters: int, right: bool, skip: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        kernel = (2, 2) if right else (2, 3)
        self.conv1 = DownShiftedConv(2 * filters, filters, kernel, right=right)
        self.nin = weight_norm(nn.Conv2d(2 * skip, filters, 1)) if skip else None
        self.dropout = dropout
        self.conv2 = DownShiftedConv(2 * filters, 2 * filters, kernel, right=right)

    def forward(self, x: Tensor, a: Optional[Tensor] = None) -> Tensor:
        c = self.conv1(concat_elu(x))
        if a is not None:
            c = c + self.nin(concat_elu(a))
        c = F.dropout(concat_elu(c), self.dropout, self.training) if self.dropout else concat_elu(c)
        gate, value = self.conv2(c).chunk(2, dim=1)
        return x + gate * torch.sigmoid(value)


class PixelCNNpp(nn.Module):
    """PixelCNN++ on one-channel images in [-1, 1]: x (B, 1, H, W) -> mixture parameters (B, 3 nr_mix, H, W).
    ``stages``: resolutions (the official MNIST model: 2, i.e. disable_third=True; CIFAR-10: 3)."""

    def __init__(self, nr_filters: int = 160, nr_resnet: int = 3, nr_mix: int = 10, stages: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.hparams = dict(nr_filters=nr_filters, nr_resnet=nr_resnet, nr_mix=nr_mix, stages=stages,
                            dropout=dropout)
        f, r = nr_filters, nr_resnet
        self.u_init = DownShiftedConv(2, f, (2, 3))
        self.ul_init_down = DownShiftedConv(2, f, (1, 3))
        self.ul_init_right = DownShiftedConv(2, f, (2, 1), right=True)
        self.up_u = nn.ModuleList([nn.ModuleList([GatedResnet(f, False, 0, dropout) for _ in range(r)])
                                   for _ in range(stages)])
        self.up_ul = nn.ModuleList([nn.ModuleList([GatedResnet(f, True, f, dropout) for _ in range(r)])
                                    for _ in range(stages)])
        self.down_u_stride = nn.ModuleList([DownShiftedConv(f, f, (2, 3), 2) for _ in range(stages - 1)])
        self.down_ul_stride = nn.ModuleList([DownShiftedConv(f, f, (2, 2), 2, right=True) for _ in range(stages - 1)])
        # down pass: the deepest stage has nr_resnet blocks, every shallower one nr_resnet + 1 (pixelcnn.py:133-150)
        sizes = [r] + [r + 1] * (stages - 1)
        self.dn_u = nn.ModuleList([nn.ModuleList([GatedResnet(f, False, f, dropout) for _ in range(n)])
                                   for n in sizes])
        self.dn_ul = nn.ModuleList([nn.ModuleList([GatedResnet(f, True, 2 * f, dropout) for _ in range(n)])
                                    for n in sizes])
        self.up_u_deconv = nn.ModuleList([DownShiftedDeconv(f, f, (2, 3)) for _ in range(stages - 1)])
        self.up_ul_deconv = nn.ModuleList([DownShiftedDeconv(f, f, (2, 2), right=True) for _ in range(stages - 1)])
        self.out = weight_norm(nn.Conv2d(f, 3 * nr_mix, 1))

    def forward(self, x: Tensor) -> Tensor:
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # a channel of ones marks the image's extent
        u_list = [down_shift(self.u_init(x_pad))]
        ul_list = [down_shift(self.ul_init_down(x_pad)) + right_shift(self.ul_init_right(x_pad))]
        for s in range(len(self.up_u)):
            if s > 0:
                u_list.append(self.down_u_stride[s - 1](u_list[-1]))
                ul_list.append(self.down_ul_stride[s - 1](ul_list[-1]))
            for block_u, block_ul in zip(self.up_u[s], self.up_ul[s]):
                u_list.append(block_u(u_list[-1]))
                ul_list.append(block_ul(ul_list[-1], u_list[-1]))
        u, ul = u_list.pop(), ul_list.pop()
        for s, (blocks_u, blocks_ul) in enumerate(zip(self.dn_u, self.dn_ul)):
            if s > 0:
                u, ul = self.up_u_deconv[s - 1](u), self.up_ul_deconv[s - 1](ul)
            for block_u, block_ul in zip(blocks_u, blocks_ul):
                u = block_u(u, u_list.pop())
                ul = block_ul(ul, torch.cat([u, ul_list.pop()], dim=1))
        assert not u_list and not ul_list
        return self.out(F.elu(ul))


def discretized_logistic_mixture_loglik(x: Tensor, params: Tensor) -> Tensor:
    """log p(x) of each image under a per-pixel mixture of discretized logistics (256 levels on [-1, 1]),
    summed over the pixels, in nats: the negative of ssl_bad_gan's ``discretized_mix_logistic_loss_c1`` with
    ``sum_all=False`` (pixelcnn_loss.py:68-127). x: (B, 1, H, W) in [-1, 1]; params: (B, 3 M, H, W) as
    [mixture logits, means, log scales]. Returns (B,)."""
    x, params = x.float(), params.float()
    m = params.shape[1] // 3
    logit_probs, means, log_scales = params[:, :m], params[:, m:2 * m], params[:, 2 * m:3 * m].clamp(min=-7.0)
    centered = x - means  # (B, M, H, W), x broadcast over the mixture
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered + 1.0 / 255.0)
    min_in = inv_stdv * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # the bin of -1 (0 before scaling)
    log_one_minus_cdf_min = -F.softplus(min_in)  # the bin of 1 (255)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    log_probs = log_probs + F.log_softmax(logit_probs, dim=1)
    return torch.logsumexp(log_probs, dim=1).flatten(1).sum(dim=1)


def to_unit_range(x: Tensor, scaling: str) -> Tensor:
    """Images in ssgan's scaling -> [-1, 1], what the density model reads (mnist_trainer.py:52, 125)."""
    if scaling == "unit":
        return x * 2 - 1
    if scaling == "symmetric":
        return x
    raise ValueError(f"the density model reads images scaled unit or symmetric, not {scaling}")


@torch.no_grad()
def log_likelihoods(model: nn.Module, x: Tensor, batch_size: int = 200) -> Tensor:
    """log p(x) of each image (x in [-1, 1], (N, 1, H, W)), in batches, model in eval mode. (N,)."""
    was_training = model.training
    model.eval()
    out = torch.cat([discretized_logistic_mixture_loglik(chunk, model(chunk)) for chunk in x.split(batch_size)])
    model.train(was_training)
    return out


def density_threshold(log_probs: np.ndarray) -> float:
    """The official threshold (mnist_trainer.py:61-62): the value at index int(0.1 N) of the partitioned
    log-likelihoods, i.e. the 10th percentile rounded down to an element."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    cut = int(log_probs.shape[0] * 0.1)
    return float(np.partition(log_probs, cut)[cut])


def train_density(x: Tensor, *, epochs: int, batch_size: int = 40, lr: float = 2e-4, seed: int = 0,
                  model: Optional[PixelCNNpp] = None, log=None, max_iters: Optional[int] = None,
                  **hparams) -> Dict:
    """Fit a PixelCNN++ by maximum likelihood (Adam, the official pixelcnn_config for MNIST: lr 2e-4,
    batch 40) on images x in [-1, 1], (N, 1, H, W). Returns {"model", "seconds", "iters", "bits_per_dim"}
    (the last epoch's training mean). ``max_iters``: stop early (timing measurements)."""
    torch.manual_seed(seed)
    model = model or PixelCNNpp(**hparams)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.RandomState(seed)
    start, iters, bpd = time.time(), 0, float("nan")
    model.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        total, count = 0.0, 0
        for rows in order.split(batch_size):
            nll = -discretized_logistic_mixture_loglik(x[rows], model(x[rows])).mean()
            opt.zero_grad(set_to_none=True)
            nll.backward()
            opt.step()
            total, count, iters = total + nll.item() * len(rows), count + len(rows), iters + 1
            if max_iters is not None and iters >= max_iters:
                break
        bpd = total / count / (math.log(2) * x[0].numel())
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: {bpd:.4f} bits per dim")
        if max_iters is not None and iters >= max_iters:
            break
    return {"model": model, "seconds": time.time() - start, "iters": iters, "bits_per_dim": bpd}


@dataclass
class DensityFit:
    """A PixelCNN++ fitted by ``fit_density``: the model, the official threshold on its training images' log
    likelihoods, and what the file records about it (``info``: data set, images, epochs, seconds, bits per dim)."""

    model: PixelCNNpp
    threshold: float
    scaling: str
    image_shape: List[int]
    info: Dict[str, Any]

    def write(self, path: Path | str) -> None:
        """The file ``method.density_model`` names (``save_density``); a new file, never replacing one."""
        save_density(path, self.model, self.threshold, self.scaling, self.image_shape, self.info)


def fit_density(cfg: Config, *, epochs: int = 1, filters: int = 160, resnet: int = 3, mix: int = 10, stages: int = 2,
                batch_size: int = 40, lr: float = 2e-4, max_images: Optional[int] = None, seed: int = 0,
                log: Optional[Callable[[str], None]] = None) -> DensityFit:
    """What ``ssgan density`` does: fit the PixelCNN++ on the train split's images of ``cfg.dataset`` (the
    unlabeled pool, never the test set; the first ``max_images`` of them), then take the threshold as the
    official code does (``density_threshold``). The defaults are the official MNIST sizes. Bad sizes or a data
    set the model cannot read are ConfigError, raised before any training."""
    if min(epochs, filters, resnet, mix, stages, batch_size) < 1 or lr <= 0 or (max_images is not None and
                                                                                max_images < 1):
        raise ConfigError("the density model's epochs, filters, resnet blocks, mixtures, stages, batch size, "
                          "learning rate and image count must be positive")
    for name, value in (("nr_filters", filters), ("nr_resnet", resnet), ("nr_mix", mix), ("stages", stages)):
        if value > DENSITY_BOUNDS[name][1]:  # (a model its own loader would refuse)
            raise ConfigError(f"the density model's {name}={value}: at most {DENSITY_BOUNDS[name][1]}")
    if cfg.dataset.image_shape[0] != 1:
        raise ConfigError(f"dataset={cfg.dataset.name}: the density model takes one-channel images")
    if cfg.dataset.scaling not in ("unit", "symmetric"):
        raise ConfigError(f"dataset.scaling={cfg.dataset.scaling}: the density model reads unit or symmetric images")
    data = load_data(cfg.dataset, seed)
    x = to_unit_range(torch.from_numpy(data.x_unlabeled[:max_images]).float(), cfg.dataset.scaling)
    fitted = train_density(x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, nr_filters=filters,
                           nr_resnet=resnet, nr_mix=mix, stages=stages, log=log)
    threshold = density_threshold(log_likelihoods(fitted["model"], x).numpy())
    info = {"dataset": cfg.dataset.name, "images": len(x), "epochs": epochs, "seconds": fitted["seconds"],
            "bits_per_dim": fitted["bits_per_dim"]}
    return DensityFit(fitted["model"], threshold, cfg.dataset.scaling, list(cfg.dataset.image_shape), info)


def save_density(path: Path | str, model: PixelCNNpp, threshold: float, scaling: str, image_shape: Sequence[int],
                 info: Optional[Dict] = None) -> None:
    """The file the MNIST recipe loads (method.density_model): weights, hyperparameters, threshold. A new file,
    written atomically (its folder is created); an existing one is RunDirError and left as it was."""
    buffer = io.BytesIO()
    torch.save({"hparams": model.hparams, "state_dict": model.state_dict(), "threshold": threshold,
                "scaling": scaling, "image_shape": list(image_shape), "info": info or {}}, buffer)
    make_dir(Path(path).parent)
    atomic_create(path, buffer.getvalue())


# The hyperparameters a density model file may declare, checked before anything is built (a file is data:
# stages=10**9 would build 10**9 blocks); ssgan density trains within them. The official MNIST model: 160
# filters, 3 resnet blocks, 10 mixtures, 2 stages.
DENSITY_BOUNDS = {"nr_filters": (1, 1024), "nr_resnet": (1, 32), "nr_mix": (1, 100), "stages": (1, 4)}


def _check_density_payload(payload, path) -> None:
    """ConfigError with one line unless ``payload`` has the fields ``save_density`` writes, within bounds."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"method.density_model={path}: not a density model written by ssgan density ({why})")

    if not isinstance(payload, dict) or not isinstance(payload.get("hparams"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise refuse("expected hparams and state_dict mappings")
    hparams = payload["hparams"]
    if set(hparams) - set(DENSITY_BOUNDS) - {"dropout"}:
        raise refuse(f"unknown hparams {sorted(map(str, set(hparams) - set(DENSITY_BOUNDS) - {'dropout'}))}")
    for name, (low, high) in DENSITY_BOUNDS.items():
        value = hparams.get(name, low)
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise refuse(f"hparams {name}={value!r:.20}: expected an integer in {low}..{high}")
    dropout = hparams.get("dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise refuse(f"hparams dropout={dropout!r:.20}: expected a number in [0, 1)")
    threshold = payload.get("threshold")
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)):
        raise refuse(f"threshold {threshold!r:.20} is not a finite number")
    shape = payload.get("image_shape")
    if not (isinstance(shape, list) and all(isinstance(n, int) for n in shape)):
        raise refuse("image_shape is not a list of integers")


def load_density(path, device="cpu") -> Dict:
    """A file of ``save_density``, read with weights-only unpickling: a file that holds more than weights and
    plain values (code to run on loading) is ConfigError, never unpickled."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        found = [line for line in str(error).splitlines() if "Unsupported" in line]
        raise ConfigError(f"method.density_model={path}: refused, the file holds more than weights "
                          f"({found[0].strip() if found else 'unsupported content'})") from None
    _check_density_payload(payload, path)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave torch's stream where it was
        model = PixelCNNpp(**payload["hparams"]).to(device)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {**payload, "model": model}


class DensityPenalty:
    """Bad GAN's low-density penalty in the G step (mnist_trainer.py:122-138): at global iterations
    > ``method.density_start``, with probability ``method.density_prob``, ``method.density_batch`` fresh z are
    generated and ``density_weight * low_density_penalty(log p(G(z)), threshold)`` joins the G loss.

    The official code draws the decision from Python's ``random`` and z from the global stream; here both come
    from the (seed, iteration) pair, so a resumed run makes the same draws (and no other stream moves)."""

    def __init__(self, cfg, device) -> None:
        me = cfg.method
        try:
            loaded = load_density(me.density_model, device)
        except (OSError, KeyError, RuntimeError, EOFError) as error:
            raise ConfigError(f"method.density_model={me.density_model}: not a density model written by "
                              f"ssgan density ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
                              ) from None
        if list(loaded["image_shape"]) != list(cfg.dataset.image_shape):
            raise ConfigError(f"method.density_model={me.density_model}: trained on images of shape "
                              f"{loaded['image_shape']}, this run's are {list(cfg.dataset.image_shape)}")
        self.model, self.threshold = loaded["model"], float(loaded["threshold"])
        self.scaling, self.seed, self.z_dim = cfg.dataset.scaling, cfg.seed, cfg.model.z_dim
        self.weight, self.start, self.prob, self.batch = me.density_weight, me.density_start, me.density_prob, \
            me.density_batch
        self.device = device

    def z_at(self, iteration: int) -> Optional[Tensor]:
        """The z of the penalty at this global iteration (0-based), or None when it is not applied."""
        if iteration <= self.start:
            return None
        if np.random.RandomState([self.seed, 5, iteration]).rand() >= self.prob:
            return None
        generator = torch.Generator().manual_seed(int(np.random.RandomState([self.seed, 6, iteration]).randint(2 ** 31)))
        return torch.rand(self.batch, self.z_dim, generator=generator).to(self.device)

    def __call__(self, gen: nn.Module, z: Tensor) -> Tensor:
        from .losses import low_density_penalty

        x = to_unit_range(gen(z), self.scaling)  # (N, 1, H, W) in [-1, 1]
        log_probs = discretized_logistic_mixture_loglik(x, self.model(x))  # (N,), gradients into G only
        return self.weight * low_density_penalty(log_probs, self.threshold)
