"""The denoiser network: its blind spot is a property of the architecture (autograd proof)."""
import numpy as np
import pytest
import torch

from btomo.kernels.denoiser import BlindSpotNet, DenoiserSpec, normalise_stack, receptive_radius


@pytest.mark.parametrize("spec", [DenoiserSpec(), DenoiserSpec(channels=8, blocks=3, head_channels=8)],
                         ids=["paper", "small"])
def test_blind_spot_is_exactly_3x3(spec):
    torch.manual_seed(0)
    net = BlindSpotNet(spec).double()
    with torch.no_grad():  # random biases and weights everywhere, so nothing is zero by accident
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(1, spec.context, 48, 48, dtype=torch.float64, requires_grad=True)
    py, px = 24, 21
    net(x)[0, 0, py, px].backward()
    g = x.grad[0, spec.context // 2].abs()
    window = g[py - 1 : py + 2, px - 1 : px + 2]
    assert torch.count_nonzero(window) == 0, f"the output sees its own 3x3 window: {window}"
    # just outside the window the output does depend on the centre frame, all around it
    ring = torch.cat([g[py - 2, px - 2 : px + 3], g[py + 2, px - 2 : px + 3], g[py - 1 : py + 2, px - 2],
                      g[py - 1 : py + 2, px + 2]])
    assert torch.all(ring > 0), f"no dependence just outside the blind spot: {ring}"
    # and the neighbours are seen at the pixel itself
    assert x.grad[0, 0, py, px] != 0 and x.grad[0, -1, py, px] != 0
    # nothing beyond the receptive radius
    r = receptive_radius(spec)
    far = g.clone()
    far[max(py - r, 0) : py + r + 1, max(px - r, 0) : px + r + 1] = 0
    assert torch.count_nonzero(far) == 0


def test_shapes_sizes_and_bad_input():
    net = BlindSpotNet()
    assert net.parameter_count() > 50_000  # the paper's size, not a toy
    assert net(torch.zeros(2, 5, 32, 40)).shape == (2, 1, 32, 40)
    with pytest.raises(ValueError, match=r"expected \(batch, 5, H, W\)"):
        net(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="odd"):
        DenoiserSpec(context=4)
    spec = DenoiserSpec(channels=8, blocks=2)
    assert DenoiserSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown"):
        DenoiserSpec.from_dict({"channels": 8, "colour": 1})


def test_normalise_stack_numpy_and_torch_agree():
    a = np.random.default_rng(1).poisson(2.0, (3, 5, 16, 16)).astype(np.float32)
    n1, m1, s1 = normalise_stack(a)
    n2, m2, s2 = normalise_stack(torch.from_numpy(a))
    assert n1.shape == a.shape and np.allclose(n1.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(n1, n2.numpy(), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu_fp32_and_bf16():
    torch.manual_seed(3)
    net = BlindSpotNet(DenoiserSpec(channels=16, blocks=4)).eval()
    x = torch.randn(4, 5, 96, 96)
    with torch.inference_mode():
        ref = net(x)
        gpu = net.cuda().to(memory_format=torch.channels_last)
        out = gpu(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(x.cuda()).float().cpu()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)
    assert torch.sqrt(torch.mean((half - ref) ** 2)) < 0.05 * ref.std()
