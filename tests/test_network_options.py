"""The network options of the CPU recipe: (2+1)D convolutions, patch folding, the nearest given
frame as input, Min-SNR weighting, and channels_last weights whose gradients match their strides."""

import numpy as np
import pytest
import torch

from conftest import micro_config
from video_diffusion.config import validate
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.models.nn import to_channels_last
from video_diffusion.models.blocks import (Conv2Plus1d, GivenCorrelation, KernelHead, arrivals, chain_order, local_kernel,
                                           local_scatter, nearest_given_frames, patch_match, patchify, unpatchify)
from conftest import make, run


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 4, 8, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 4, 4, 3)
    # channel c*4 + 2*i + j of patch (y, x) is pixel (2y + i, 2x + j) of channel c
    assert torch.equal(p[1, 1 * 4 + 2 * 1 + 0, 3, 2, 1], x[1, 1, 3, 5, 2])
    assert torch.equal(unpatchify(p, 2), x)


@pytest.mark.parametrize("kw", [dict(patch_size=2), dict(conv_type="2+1d"), dict(patch_size=2, conv_type="2+1d",
                                                                                attention_type="full")])
def test_options_keep_the_output_shape(kw):
    model = make(image_size=16, channel_mult=(1, 2), **kw)
    assert run(model, 2, 3, 5, 16, 16).shape == (2, 3, 5, 16, 16)


def test_patch_size_must_divide_the_frames():
    with pytest.raises(ValueError, match="patch_size 2"):
        make(image_size=12, channel_mult=(1, 2, 2), patch_size=2)


def test_2plus1d_is_cheaper_and_its_residual_branches_train():
    full = make(channel_mult=(1, 2))
    factorised = make(channel_mult=(1, 2), conv_type="2+1d")
    assert sum(p.numel() for p in factorised.parameters()) < 0.7 * sum(p.numel() for p in full.parameters())
    # built fresh, a residual branch ends in a zeroed temporal half; the spatial half is not
    # zeroed (zeroing both would leave neither a gradient), so a few steps make the branch live
    torch.manual_seed(0)
    model = create_model(micro_config(conv_type="2+1d"))
    pair = next(m for m in model.modules() if isinstance(m, Conv2Plus1d) and not m[-1].weight.any())
    assert pair[0].weight.abs().sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        out = model(x, torch.tensor([10, 500]), obs_mask=torch.zeros(2, 4))
        (out - target).square().mean().backward()
        opt.step()
    assert pair[-1].weight.abs().sum() > 0


def test_nearest_given_frames_by_hand():
    x = torch.arange(6.0).reshape(1, 1, 6, 1, 1).repeat(2, 1, 1, 1, 1)
    mask = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    given, offset = nearest_given_frames(x, mask)
    assert given[0, 0, :, 0, 0].tolist() == [1, 1, 1, 4, 4, 4]  # frame 2 is 1 from frame 1, 2 from frame 4
    assert (offset[0] * 6).round().tolist() == [-1, 0, 1, -1, 0, 1]
    assert not given[1].any() and not offset[1].any()  # nothing given: zeros
    second, offset2 = nearest_given_frames(x, mask, rank=1)
    assert second[0, 0, :, 0, 0].tolist() == [4, 4, 4, 1, 1, 1]  # the other given frame, ties as before
    assert (offset2[0] * 6).round().tolist() == [-4, -3, -2, 2, 3, 4]
    one = torch.tensor([[0, 0, 1, 0, 0, 0]])
    assert torch.equal(nearest_given_frames(x[:1], one, rank=1)[0], nearest_given_frames(x[:1], one)[0])  # only one


def first_layer_change_at_frame_7(given_frame_input, given_frames=1, given=(0,), **kw):
    """How much the first layer's output at frame 7 moves when the given frame 0 changes."""
    model = make(image_size=16, channel_mult=(1, 2), given_frame_input=given_frame_input, given_frames=given_frames,
                 **kw)
    seen = []
    model.input_blocks[0].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 3, 8, 16, 16)
    mask = torch.zeros(1, 8)
    mask[0, list(given)] = 1
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    for v in (x, x2):
        model(v, torch.tensor([999]), obs_mask=mask)
    return (seen[1] - seen[0])[0, :, 7].abs().sum()


def test_given_frame_input_brings_the_given_frame_to_every_frame_at_the_first_layer():
    # a 3x3x3 convolution sees frames 6-8 only; with the option frame 7 sees frame 0 at once
    assert first_layer_change_at_frame_7(False) == 0
    assert first_layer_change_at_frame_7(True) > 0
    model = make(image_size=16, channel_mult=(1, 2), given_frame_input=True)
    assert model.input_blocks[0][0].in_channels == 3 + 3 + 1 + 1  # frames, nearest given frames, mask, distance
    with pytest.raises(ValueError, match="mask_input"):
        make(given_frame_input=True, mask_input=False)


def test_two_given_frames_bring_the_earlier_given_frame_to_every_frame_too():
    # frames 0 and 1 given: frame 7's nearest is frame 1; only with two does it see frame 0 at once
    assert first_layer_change_at_frame_7(True, given_frames=1, given=(0, 1)) == 0
    assert first_layer_change_at_frame_7(True, given_frames=2, given=(0, 1)) > 0
    model = make(image_size=16, channel_mult=(1, 2), given_frame_input=True, given_frames=2)
    assert model.input_blocks[0][0].in_channels == 3 + 2 * 3 + 1 + 2  # frames, two given frames, mask, distances
    with pytest.raises(ValueError, match="given_frames must be 1 or 2"):
        make(given_frame_input=True, given_frames=3)
    with pytest.raises(ValueError, match="--given_frames 2 needs --given_frame_input"):
        validate(micro_config(given_frames=2, given_frame_input=False))


def test_the_correlation_of_the_given_frames_peaks_at_their_displacement():
    # the nearest given frame is the second moved by (1, -2) cells: away from the borders, the
    # channel comparing (y, x) with (y - 1, x + 2) scores the highest cosine there is, 1
    torch.manual_seed(0)
    corr = GivenCorrelation(12, radius=2)
    second = torch.randn(2, 12, 3, 16, 16)
    inner = corr(torch.roll(second, shifts=(1, -2), dims=(3, 4)), second)[..., 4:12, 4:12]
    assert inner.shape[1] == 25
    assert (inner.argmax(dim=1) == (-1 + 2) * 5 + (2 + 2)).all()
    assert torch.allclose(inner[:, 9], torch.ones(()), atol=1e-5)
    # in the network: frames 0 and 1 given, frame 7 sees frame 0 at the first layer through it
    assert first_layer_change_at_frame_7(True, given=(0, 1), given_correlation=1) > 0
    model = make(image_size=16, channel_mult=(1, 2), given_frame_input=True, given_correlation=1)
    assert model.input_blocks[0][0].in_channels == 3 + 3 + 1 + 1 + 9  # ..., the 3 x 3 cost volume
    inputs = []
    model.input_blocks[0][0].register_forward_pre_hook(lambda m, i: inputs.append(i[0]))
    model(torch.randn(2, 3, 4, 16, 16), torch.tensor([999, 999]), obs_mask=torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
    assert inputs[0][0, -9:].abs().sum() > 0 and not inputs[0][1, -9:].any()  # nothing given, nothing compared
    with pytest.raises(ValueError, match="given_correlation needs given_frame_input"):
        make(given_correlation=1)
    with pytest.raises(ValueError, match="--given_correlation needs --given_frame_input"):
        validate(micro_config(given_correlation=1))
    with pytest.raises(ValueError, match="--given_correlation must be >= 0"):
        validate(micro_config(given_correlation=-1, given_frame_input=True))


def test_the_kernel_head_builds_frames_outwards_from_the_given_ones():
    distance, source = chain_order(torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]))
    assert distance.tolist() == [[1, 0, 1, 2, 3], [0, 1, 2, 1, 0], [0, 1, 2, 3, 4]]
    # frame 2 of the second video is as far from 0 as from 4: the earlier side wins; no given frame: from 0
    assert source.tolist() == [[1, 1, 1, 2, 3], [0, 0, 1, 4, 4], [0, 0, 1, 2, 3]]
    # one-hot kernels move a frame; uniform ones average the window (the border repeated)
    frame = torch.randn(2, 3, 8, 8)
    right = torch.full((2, 9, 8, 8), -1e4)
    right[:, 1 * 3 + 0] = 0  # take from (y, x - 1)
    assert torch.allclose(local_kernel(frame, right, 1)[..., 1:], frame[..., :-1])
    box = torch.nn.functional.avg_pool2d(frame, 3, stride=1)
    assert torch.allclose(local_kernel(frame, torch.zeros(2, 9, 8, 8), 1)[..., 1:-1, 1:-1], box, atol=1e-6)


def test_a_scattering_copy_moves_a_frame_and_keeps_what_it_holds():
    frame = torch.zeros(2, 3, 12, 12)
    frame[:, :, 3:9, 3:9] = torch.rand(2, 3, 6, 6)  # content away from the borders
    base = torch.zeros_like(frame)
    right = torch.full((2, 9, 12, 12), -1e4)
    right[:, 1 * 3 + 2] = 0  # every pixel sends towards (y, x + 1)
    assert torch.allclose(local_scatter(frame, base, right, 1)[..., 1:], frame[..., :-1])
    # kernels that vary from pixel to pixel: the content's sum is kept (a gathering copy loses it)
    logits = torch.randn(2, 9, 12, 12) * 3
    assert torch.allclose(local_scatter(frame, base, logits, 1).sum(dim=(2, 3)), frame.sum(dim=(2, 3)), atol=1e-4)
    assert not torch.allclose(local_kernel(frame, logits, 1).sum(dim=(2, 3)), frame.sum(dim=(2, 3)), atol=1e-2)
    # every pixel staying put: the neighbour itself, whatever the base; the head sends the neighbour where
    # its nearly clean input shows it went
    drawn = torch.randn_like(frame)
    still = torch.full((2, 9, 12, 12), -1e4)
    still[:, 4] = 0
    assert torch.allclose(local_scatter(frame, drawn, still, 1), frame, atol=1e-6)
    video = torch.stack([torch.roll(frame[0], shifts=(f, -f), dims=(1, 2)) for f in range(3)], dim=1)[None]
    head = KernelHead(3, 1, copy="scatter")
    out = head(head_output(torch.zeros_like(video), 1e4, 1e4, torch.zeros(1, 9, 3, 12, 12)), video,
               torch.tensor([[1, 0, 0]]), torch.tensor([0.999]))
    assert torch.allclose(out, video, atol=1e-3)
    with pytest.raises(ValueError, match="copy must be one of"):
        KernelHead(3, 1, copy="splat")


def test_a_scatter_mean_averages_what_collides_and_is_the_scatter_elsewhere():
    # two pixels, 0.2 and 0.6, both sent to one place over a base of -1: a plain scatter adds their
    # differences from the base (-1 + 1.2 + 1.6 = 1.8), the mean makes one of them (0.4)
    frame = torch.full((1, 1, 5, 5), -1.0)
    frame[0, 0, 2, 1], frame[0, 0, 2, 3] = 0.2, 0.6
    logits = torch.full((1, 9, 5, 5), -1e4)
    logits[:, 4] = 0  # stay, except the two pixels, which move onto (2, 2), and (2, 2), which moves down
    logits[0, :, 2, 2] = -1e4
    logits[0, 2 * 3 + 1, 2, 2] = 0
    logits[0, :, 2, 1] = -1e4
    logits[0, 1 * 3 + 2, 2, 1] = 0
    logits[0, :, 2, 3] = -1e4
    logits[0, 1 * 3 + 0, 2, 3] = 0
    base = torch.full_like(frame, -1.0)
    plain, mean = local_scatter(frame, base, logits, 1), local_scatter(frame, base, logits, 1, mean=True)
    assert torch.allclose(plain[0, 0, 2, 2], torch.tensor(1.8)) and torch.allclose(mean[0, 0, 2, 2], torch.tensor(0.4))
    # elsewhere the two are the same (here what arrives is the base; a deficit shows the base in both)
    elsewhere = torch.ones(5, 5, dtype=torch.bool)
    elsewhere[2, 2] = False
    assert torch.allclose(plain[0, 0][elsewhere], mean[0, 0][elsewhere])
    assert torch.allclose(mean[0, 0, 2, 1], torch.tensor(-1.0))  # the place a pixel left: the base
    logits = torch.randn(2, 9, 8, 8) * 3
    frame, base = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    head = KernelHead(3, 1, copy="scatter_mean")  # the head passes the choice on
    video = torch.stack([frame, frame], dim=2)
    out = head(head_output(torch.stack([base, base], 2), 1e4, -1e4, torch.stack([logits, logits], 2)), video,
               torch.tensor([[1, 0], [1, 0]]), torch.tensor([0.5, 0.5]))
    assert torch.allclose(out[:, :, 1], local_scatter(frame, base, logits, 1, mean=True), atol=1e-5)


def head_output(drawn, blend, trust, logits):
    """The network's output as ``KernelHead`` reads it, from constants for the blend and the match's weight."""
    n, _, t, h, w = drawn.shape
    return torch.cat([drawn, torch.full((n, 1, t, h, w), blend), torch.full((n, 1, t, h, w), trust), logits], dim=1)


def test_the_kernel_head_carries_a_given_frame_and_blends_in_what_it_draws():
    head = KernelHead(3, radius=2)
    n, t = 2, 5
    x = torch.randn(n, 3, t, 16, 16)
    drawn = torch.randn(n, 3, t, 16, 16)
    logits = torch.full((n, 25, t, 16, 16), -1e4)
    logits[:, 2 * 5 + 1] = 0  # every kernel takes from one pixel to the left: a motion of +1 column a frame
    noisy = torch.full((n,), 0.01)  # the input says next to nothing, and the match's weight is ~0 anyway
    copy = head(head_output(drawn, 1e4, -1e4, logits), x, torch.tensor([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]), noisy)
    for f in range(t):
        assert torch.equal(copy[0, :, f, :, f:], x[0, :, 0, :, :16 - f])  # frame f: frame 0 moved f columns
    assert torch.equal(copy[1, :, 2], x[1, :, 2])  # a given frame keeps its values
    assert torch.equal(copy[1, :, 4, :, 2:], x[1, :, 2, :, :14])
    assert torch.equal(copy[1, :, 0, :, 2:], x[1, :, 2, :, :14])  # frames before a given one are built from it too
    # blend 0: the drawn frames; no given frame: the video grows from its drawn frame 0
    assert torch.equal(head(head_output(drawn, -1e4, -1e4, logits), x, torch.zeros(n, t), noisy), drawn)
    grown = head(head_output(drawn, 1e4, -1e4, logits), x, torch.zeros(n, t), noisy)
    assert torch.equal(grown[:, :, 3, :, 3:], drawn[:, :, 0, :, :13])


def test_the_kernel_head_follows_what_its_noisy_input_shows_as_much_as_the_noise_allows():
    # a frame moved by (1, -2) pixels, noised: the likelihood peaks at the displacement it came from,
    # sharply when nearly clean, hardly at all under heavy noise
    frame = torch.rand(2, 3, 12, 12)
    abar = torch.tensor([0.99, 0.02])
    moved = abar.sqrt()[:, None, None, None] * torch.roll(frame, shifts=(1, -2), dims=(2, 3))
    moved = moved + (1 - abar).sqrt()[:, None, None, None] * torch.randn_like(frame) * torch.tensor([1.0, 0.0])[:, None, None, None]
    match = patch_match(moved, frame, abar, 2)[..., 3:-3, 3:-3]
    assert (match[0].argmax(dim=0) == (-1 + 2) * 5 + (2 + 2)).all()
    spread = match.amax(dim=1) - match.amin(dim=1)
    assert spread[0].min() > 20 and spread[1].max() < 5
    # the head, with no kernel of its own, rebuilds a video whose nearly clean input shows each frame's motion
    # (away from the borders, which a wrapped roll and a repeated border see differently)
    frame = torch.rand(3, 32, 32)
    video = torch.stack([torch.roll(frame, shifts=(f, -2 * f), dims=(1, 2)) for f in range(4)], dim=1)[None]
    out = KernelHead(3, 2)(head_output(torch.zeros_like(video), 1e4, 0.0, torch.zeros(1, 25, 4, 32, 32)), video,
                           torch.tensor([[1, 0, 0, 0]]), torch.tensor([0.999]))
    assert torch.allclose(out[..., 10:-10, 10:-10], video[..., 10:-10, 10:-10], atol=1e-3)


def moving_patch(t=6, size=24):
    """A 4x4 patch of distinct values moving (+1, +2) pixels a frame over a zero background."""
    video = torch.zeros(1, 1, t, size, size)
    for f in range(t):
        video[0, 0, f, 4 + f:8 + f, 2 + 2 * f:6 + 2 * f] = torch.arange(1.0, 17.0).view(4, 4) / 16
    return video


@pytest.mark.parametrize("copy", ["gather", "scatter"])
def test_the_motion_state_can_carry_two_given_frames_motion_on_through_noise(copy):
    # The frames to build are pure noise and the match is untrusted (trust ~0), so only the motion
    # state can place the patch. A map that says "the next step moves as the last one did" (the
    # identity in the scatter's indexing; in the gather's, taking from p + d means moving by -d)
    # carries it exactly; the untrained map (zero) is the head without the state, bit for bit.
    t = 6
    video = moving_patch(t)
    head = KernelHead(1, 2, copy=copy, motion=True)
    zero = torch.zeros(1, 1, t, 24, 24)
    out = torch.cat([zero, zero + 1e4, zero - 1e4, torch.zeros(1, 25, t, 24, 24)], dim=1)
    with torch.no_grad():
        head.motion.copy_(torch.eye(25) * 0.5 if copy == "scatter" else torch.eye(25).flip(0) * 0.5)
    for given in ([1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]):  # forwards in time, and backwards
        mask = torch.tensor([given])
        noisy = torch.where(mask[:, None, :, None, None] > 0, video, torch.randn_like(video))
        built = head(out, noisy, mask, torch.tensor([1e-4]))
        # a scatter is exact; a gather is exact where the patch is, while a background pixel just behind
        # it, which nothing is known to reach, averages its window, the patch's edge included
        where = video > 0 if copy == "gather" else torch.ones_like(video, dtype=torch.bool)
        assert torch.allclose(built[where], video[where], atol=1e-4)
        assert (built - video).abs().max() < 0.1
    # one given frame: nothing is known before frame 1, so frame 1 is built as without the state
    mask = torch.tensor([[1, 0, 0, 0, 0, 0]])
    logits = torch.randn(1, 25, t, 24, 24)
    out = torch.cat([zero, zero, zero, logits], dim=1)
    plain = KernelHead(1, 2, copy=copy)(out, video, mask, torch.tensor([0.5]))
    built = head(out, video, mask, torch.tensor([0.5]))
    assert torch.equal(built[:, :, :2], plain[:, :, :2])
    assert not torch.allclose(built[:, :, 2:], plain[:, :, 2:], atol=1e-3)  # frame 2 on: frame 1's kernels
    with torch.no_grad():
        head.motion.zero_()
    assert torch.equal(head(out, video, mask, torch.tensor([0.5])), plain)


@pytest.mark.parametrize("copy", ["gather", "scatter"])
def test_the_far_motion_state_carries_an_infilled_gap_from_both_ends_through_noise(copy):
    # Given frames 0 and 5 only: each chain starts from a lone given frame, and only the far state (the
    # two given frames' match over 5 steps, per step) can tell the map how the patch moves
    t = 6
    video = moving_patch(t)
    zero = torch.zeros(1, 1, t, 24, 24)
    out = torch.cat([zero, zero + 1e4, zero - 1e4, torch.zeros(1, 25, t, 24, 24)], dim=1)
    mask = torch.tensor([[1, 0, 0, 0, 0, 1]])
    noisy = torch.where(mask[:, None, :, None, None] > 0, video, torch.randn_like(video))
    heads = [KernelHead(1, 2, copy=copy, motion=True, far=far) for far in (False, True)]
    for head in heads:
        with torch.no_grad():
            head.motion.copy_(torch.eye(25) * 0.5 if copy == "scatter" else torch.eye(25).flip(0) * 0.5)
    near, far = (head(out, noisy, mask, torch.tensor([1e-4])) for head in heads)
    where = video > 0 if copy == "gather" else torch.ones_like(video, dtype=torch.bool)
    assert torch.allclose(far[where], video[where], atol=1e-4)
    assert (near - video)[:, :, 1:5].abs().max() > 0.5  # without it the chains do not know where to go
    with pytest.raises(ValueError, match="far"):
        KernelHead(1, 2, far=True)


def test_far_motion_splits_a_motion_between_whole_displacements_and_finds_the_next_given_frame():
    from video_diffusion.models.blocks import _next_given, far_motion

    frame = torch.zeros(1, 1, 24, 24)
    frame[0, 0, 8:14, 8:14] = torch.arange(36.0).view(6, 6) / 36
    later = torch.roll(frame, (3, 1), (2, 3))  # (3, 1) over 2 steps: (1.5, 0.5) a step
    shares = far_motion(frame, later, torch.tensor([2]), 2, 3)
    at = shares[0, :, 10, 10].view(5, 5)  # rows dy + 2, columns dx + 2
    expected = torch.zeros(5, 5)
    expected[3:5, 2:4] = 0.25  # (1, 0), (1, 1), (2, 0), (2, 1)
    assert torch.allclose(at, expected, atol=1e-4)
    assert torch.allclose(shares.sum(dim=1), torch.ones(1, 24, 24))
    given = torch.tensor([[1, 0, 0, 0, 1, 0, 1], [0, 0, 1, 0, 0, 0, 0]]).bool()
    step, frame_of, video = torch.tensor([1, -1, 1, 1, -1]), torch.tensor([0, 4, 4, 2, 2]), torch.tensor([0, 0, 0, 1, 1])
    assert _next_given(given, step, frame_of, video).tolist() == [4, 0, 6, -1, -1]


def test_arrivals_read_a_scatter_where_it_lands():
    # every pixel sends one pixel down: what lands at p came by (+1, 0); where nothing lands, nothing is known
    down = torch.full((1, 9, 6, 6), -1e4)
    down[:, 2 * 3 + 1] = 0
    v = arrivals(down.softmax(dim=1), 1)
    assert torch.allclose(v[0, 2 * 3 + 1, 1:], torch.ones(5, 6)) and torch.equal(v[0, :, 0], torch.zeros(9, 6))


def test_a_network_with_the_kernel_head_learns_through_every_part_and_refuses_what_it_cannot_do():
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    model = make(kernel_head=2, alphas_cumprod=abar)
    assert model.out[2].out_channels == 3 + 2 + 25
    x, mask = torch.randn(2, 3, 4, 16, 16), torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    out = model(x, torch.tensor([5, 500]), obs_mask=mask)
    assert out.shape == x.shape and torch.equal(out[0, :, 0], x[0, :, 0])
    out[:, :, 1:].square().mean().backward()
    assert model.out[2].weight.grad[3:].abs().sum() > 0  # the blend and the kernels learn
    moving = make(kernel_head=2, kernel_motion=True, alphas_cumprod=abar)
    x = moving_patch(4, 16).expand(2, 3, 4, 16, 16).contiguous()
    out = moving(x, torch.tensor([900, 900]), obs_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]))
    out[:, :, 2:].square().mean().backward()
    assert moving.kernel_head.motion.grad.abs().sum() > 0  # the motion map learns from its first step
    with pytest.raises(ValueError, match="out_channels must equal in_channels"):
        make(kernel_head=2, out_channels=6, alphas_cumprod=abar)
    with pytest.raises(ValueError, match="kernel_head needs alphas_cumprod"):
        make(kernel_head=2)
    with pytest.raises(ValueError, match="kernel radius must be >= 1"):
        KernelHead(3, 0)
    with pytest.raises(ValueError, match="--kernel_head must be >= 0"):
        validate(micro_config(kernel_head=-1))
    with pytest.raises(ValueError, match="--kernel_head needs --predict_xstart true"):
        validate(micro_config(kernel_head=2))
    with pytest.raises(ValueError, match="--kernel_head needs --predict_xstart true"):
        validate(micro_config(kernel_head=2, predict_xstart=True, learn_sigma=True))
    with pytest.raises(ValueError, match="--kernel_motion needs --kernel_head"):
        validate(micro_config(kernel_motion=True, predict_xstart=True))
    with pytest.raises(ValueError, match="kernel_motion needs kernel_head"):
        make(kernel_motion=True)
    with pytest.raises(ValueError, match="--kernel_motion_far needs --kernel_motion"):
        validate(micro_config(kernel_head=2, kernel_motion_far=True, predict_xstart=True))
    with pytest.raises(ValueError, match="kernel_motion_far needs kernel_motion"):
        make(kernel_head=2, kernel_motion_far=True, alphas_cumprod=abar)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_min_snr_weights_by_hand(kind):
    flags = {"x0": dict(predict_xstart=True), "v": dict(predict_v=True), "eps": {}}[kind]
    d = create_diffusion(micro_config(noise_schedule="cosine", min_snr_gamma=5.0, **flags))
    t = torch.tensor([0, 30, 60, 99])
    abar = torch.tensor(d.alphas_cumprod, dtype=torch.float32)[t]
    snr = abar / (1 - abar)
    clipped = torch.minimum(snr, torch.tensor(5.0))
    expected = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[kind]
    assert torch.allclose(d.snr_loss_weight(t), expected)
    # the weight enters the loss, not the logged mse
    model = lambda x, t, obs_mask=None: torch.zeros_like(x)  # noqa: E731
    x = torch.rand(4, 3, 4, 16, 16) * 2 - 1
    terms = d.training_losses(model, x, t, obs_mask=torch.zeros(4, 4), noise=torch.randn_like(x))
    assert torch.allclose(terms["loss"], terms["mse"] * expected, rtol=1e-5)


def test_the_edm_skip_and_its_loss_weight_by_hand():
    d = create_diffusion(micro_config(noise_schedule="cosine", predict_xstart=True, sigma_data=0.5))
    t = torch.tensor([0, 30, 60, 99])
    abar = torch.tensor(d.alphas_cumprod, dtype=torch.float32)[t].reshape(-1, 1, 1, 1, 1)
    sigma2 = (1 - abar) / abar
    c_skip, c_out = 0.25 / (sigma2 + 0.25), (sigma2 * 0.25 / (sigma2 + 0.25)).sqrt()
    x_t, out = torch.randn(4, 3, 4, 8, 8), torch.randn(4, 3, 4, 8, 8)
    assert torch.allclose(d.xstart_from_output(out, x_t, t), c_skip * x_t / abar.sqrt() + c_out * out, atol=1e-6)
    # an untrained network (F = 0) passes a near-clean input through
    x = torch.rand(4, 3, 4, 8, 8) * 2 - 1
    model = lambda x, t, obs_mask=None: torch.zeros_like(x)  # noqa: E731
    terms = d.training_losses(model, x, t, obs_mask=torch.zeros(4, 4), noise=torch.randn_like(x))
    assert terms["mse"][0] < 1e-3 < terms["mse"][3]
    expected = terms["mse"] / c_out.flatten() ** 2  # EDM's weight: the loss of F itself
    assert torch.allclose(terms["loss"], expected.to(terms["loss"].dtype), rtol=1e-4)


def test_channels_last_weights_have_gradients_of_their_own_strides():
    model = to_channels_last(create_model(micro_config(attention_type="factorized")))
    assert model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    out = model(torch.randn(2, 3, 4, 16, 16), torch.tensor([3, 40]), obs_mask=torch.zeros(2, 4))
    out.square().mean().backward()
    ones = [p for p in model.parameters() if p.ndim == 5 and tuple(p.shape[2:]) == (1, 1, 1)]
    assert ones  # the attention projections
    for p in model.parameters():
        assert p.grad.stride() == p.stride(), (tuple(p.shape), p.stride(), p.grad.stride())
    assert np.isfinite(out.detach().numpy()).all()


@pytest.mark.parametrize("axes", ["time", "spacetime"])
def test_rotary_positions_tell_the_frames_apart_and_only_their_offsets_count(axes):
    from video_diffusion.models.blocks import AttentionBlock, rotary_tables, rotate

    torch.manual_seed(0)
    plain, rope = (AttentionBlock(16, axes, num_heads=2, position=p) for p in ("none", "rope"))
    rope.load_state_dict(plain.state_dict())
    for block in (plain, rope):
        torch.nn.init.normal_(block.proj_out.weight)  # zero-initialised: make the attention visible
    x = torch.randn(1, 16, 6, 3, 3)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    # without positions, permuting the frames permutes the output exactly; with them it does not
    assert torch.allclose(plain(x[:, :, order]), plain(x)[:, :, order], atol=1e-5)
    assert not torch.allclose(rope(x[:, :, order]), rope(x)[:, :, order], atol=1e-3)
    # a rotation keeps lengths, and the score of two tokens depends on their offset alone
    cos, sin = rotary_tables((6,), 8, "cpu", torch.float32)
    q, k = torch.randn(8), torch.randn(8)
    qs, ks = rotate(q.expand(6, 8), cos, sin), rotate(k.expand(6, 8), cos, sin)
    assert torch.allclose(qs.norm(dim=1), q.norm().expand(6), atol=1e-5)
    assert torch.allclose(qs[1] @ ks[3], qs[2] @ ks[4], atol=1e-5) and torch.allclose(qs[0] @ ks[2], qs[3] @ ks[5], atol=1e-5)
    assert not torch.allclose(qs[1] @ ks[3], qs[1] @ ks[4], atol=1e-3)


def test_removed_local_attention_is_refused_by_name():
    with pytest.raises(ValueError, match="'local' was removed"):
        validate(micro_config(attention_type="local"))
    from video_diffusion.models.blocks import attention
    with pytest.raises(ValueError, match="attention_type must be one of"):  # no silent fall-back to factorized
        attention(16, "local", 2, -1, False)


@pytest.mark.parametrize("flags,marker", [(dict(attention_position="rope", attention_type="factorized"), "rope"),
                                          (dict(given_frame_input=True, given_frames=2), "given"),
                                          (dict(given_frame_input=True, given_correlation=1), "correlation"),
                                          (dict(kernel_head=1, predict_xstart=True), "kernel"),
                                          (dict(kernel_head=1, kernel_copy="scatter", kernel_motion=True,
                                                kernel_motion_far=True, predict_xstart=True), "kernel")])
def test_network_options_train_and_round_trip_through_a_checkpoint(tmp_path, flags, marker):
    from conftest import loop_for
    from video_diffusion.checkpoints import find_latest
    from video_diffusion.sampling.loading import load_for_sampling

    cfg = micro_config(tmp_path, max_steps=3, save_interval=3, **flags)
    loop = loop_for(cfg)
    loop.run()
    used = {"rope": {m for m in loop.model.modules() if getattr(m, "position", None) == "rope"},
            "given": {m for m in loop.model.modules() if getattr(m, "given_frames", 0) == 2},
            "correlation": {m for m in loop.model.modules() if isinstance(m, GivenCorrelation)},
            "kernel": {m for m in loop.model.modules() if isinstance(m, KernelHead)}}[marker]
    assert used
    _, model, _ = load_for_sampling(find_latest(cfg.train.log_dir), use_ema=False)
    x, t, mask = torch.randn(2, 3, 4, 16, 16), torch.tensor([5, 50]), torch.zeros(2, 4)
    with torch.no_grad():
        assert torch.equal(model(x, t, obs_mask=mask), loop.model.eval()(x, t, obs_mask=mask))
