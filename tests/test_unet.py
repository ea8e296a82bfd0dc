import pytest
import torch

from conftest import make, run
from video_diffusion.models.blocks import AttentionBlock


@pytest.mark.parametrize("seq_len", [1, 5, 8, 16, 20])
def test_output_shape_for_any_seq_len(seq_len):
    model = make()
    assert run(model, 2, 3, seq_len, 16, 16).shape == (2, 3, seq_len, 16, 16)


@pytest.mark.parametrize("size,mult", [(8, (1, 2)), (24, (1, 2, 2, 2)), (32, (1, 2)), (12, (1, 2, 2))])
def test_output_shape_for_sizes_divisible_by_the_downsampling(size, mult):
    model = make(image_size=size, channel_mult=mult)
    assert run(model, 1, 3, 3, size, size).shape == (1, 3, 3, size, size)


def test_non_square_frames():
    assert run(make(), 1, 3, 2, 16, 24).shape == (1, 3, 2, 16, 24)


def test_indivisible_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="--image_size 18"):
        make(image_size=18)
    with pytest.raises(ValueError, match="divisible"):
        run(make(), 1, 3, 2, 16, 18)


def test_learn_sigma_doubles_output_channels_and_grayscale():
    model = make(in_channels=1, out_channels=2)
    assert run(model, 2, 1, 4, 16, 16).shape == (2, 2, 4, 16, 16)


def test_mask_input_changes_output_when_on():
    model = make(mask_input=True)
    x, t = torch.randn(1, 3, 4, 16, 16), torch.tensor([10])
    a = model(x, t, obs_mask=torch.tensor([[1.0, 0, 0, 0]]))
    b = model(x, t, obs_mask=torch.tensor([[0.0, 0, 1, 0]]))
    assert (a - b).abs().max() > 1e-3


def test_mask_is_ignored_when_off():
    model = make(mask_input=False)
    x, t = torch.randn(1, 3, 4, 16, 16), torch.tensor([10])
    a = model(x, t, obs_mask=torch.tensor([[1.0, 0, 0, 0]]))
    b = model(x, t, obs_mask=torch.tensor([[0.0, 0, 1, 0]]))
    assert torch.equal(a, b)
    assert model.input_blocks[0][0].in_channels == 3


def test_mask_required_when_on():
    with pytest.raises(ValueError, match="obs_mask"):
        make()(torch.randn(1, 3, 2, 16, 16), torch.tensor([1]))


def test_timestep_changes_output():
    model = make()
    x, m = torch.randn(1, 3, 2, 16, 16), torch.zeros(1, 2)
    assert (model(x, torch.tensor([1]), obs_mask=m) - model(x, torch.tensor([900]), obs_mask=m)).abs().max() > 1e-3


def test_full_attention_architecture_runs():
    model = make(attention_type="full")
    assert run(model, 2, 3, 5, 16, 16).shape == (2, 3, 5, 16, 16)
    assert any(isinstance(m, AttentionBlock) and m.axes == "spacetime" for m in model.modules())


def naive_attention(block: AttentionBlock, x):
    """Attention written out with explicit loops over the token groups, as an independent reference."""
    n, c, t, h, w = x.shape
    heads, dh = block.num_heads, c // block.num_heads
    qkv = block.qkv(block.norm(x)).reshape(n, 3, heads, dh, t, h, w)
    out = torch.zeros(n, heads, dh, t, h, w)

    def attend(q, k, v):  # [dh, L] each
        a = torch.softmax(q.T @ k / dh ** 0.5, dim=-1)
        return (a @ v.T).T

    for b in range(n):
        for hd in range(heads):
            q, k, v = qkv[b, 0, hd], qkv[b, 1, hd], qkv[b, 2, hd]  # [dh, t, h, w]
            if block.axes == "space":
                for f in range(t):
                    out[b, hd, :, f] = attend(q[:, f].reshape(dh, -1), k[:, f].reshape(dh, -1),
                                              v[:, f].reshape(dh, -1)).reshape(dh, h, w)
            elif block.axes == "time":
                for i in range(h):
                    for j in range(w):
                        out[b, hd, :, :, i, j] = attend(q[:, :, i, j], k[:, :, i, j], v[:, :, i, j])
            else:
                out[b, hd] = attend(q.reshape(dh, -1), k.reshape(dh, -1), v.reshape(dh, -1)).reshape(dh, t, h, w)
    return x + block.proj_out(out.reshape(n, c, t, h, w))


@pytest.mark.parametrize("axes", ["space", "time", "spacetime"])
def test_attention_matches_naive_reference(axes):
    torch.manual_seed(1)
    block = AttentionBlock(8, axes, num_heads=2)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 8, 3, 4, 5)
    torch.testing.assert_close(block(x), naive_attention(block, x), atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = make(use_checkpoint=ckpt).train()
        x = torch.randn(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        model(x, torch.tensor([5]), obs_mask=torch.zeros(1, 3)).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_dropout_is_active_in_training_only():
    model = make(dropout=0.5)
    x, t, m = torch.randn(1, 3, 2, 16, 16), torch.tensor([3]), torch.zeros(1, 2)
    assert torch.equal(model(x, t, obs_mask=m), model(x, t, obs_mask=m))
    model.train()
    assert not torch.equal(model(x, t, obs_mask=m), model(x, t, obs_mask=m))


def test_class_conditional_needs_labels():
    model = make(num_classes=3)
    x, t, m = torch.randn(2, 3, 2, 16, 16), torch.tensor([3, 3]), torch.zeros(2, 2)
    a = model(x, t, obs_mask=m, y=torch.tensor([0, 0]))
    b = model(x, t, obs_mask=m, y=torch.tensor([1, 2]))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t, obs_mask=m)
