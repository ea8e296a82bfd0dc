"""
The levers that let the network carry given content: the warp head (backward warping by a
predicted velocity), channel normalisation (keeps a digit's colour, which GroupNorm over the
video removes), and EDM's skip on the x_0 prediction.
"""

import pytest
import torch

from conftest import digits_behind_each_other, micro_config
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.config import validate
from video_diffusion.models.nn import ChannelNorm, GroupNorm32
from video_diffusion.models.tracker import track
from video_diffusion.models.warp import WarpHead, shifted_reads


def test_shifted_reads_move_content_by_whole_pixels_and_read_the_border_outside():
    frames = torch.zeros(1, 2, 3, 8, 8)
    frames[0, :, :, 2, 3] = torch.tensor([0.2, 0.5, 0.9])  # both frames, channels (0.2, 0.5, 0.9)
    dy = torch.tensor([[[0, -1], [1, 0]]])  # [N, T, K]
    dx = torch.tensor([[[0, -2], [3, 0]]])
    out = shifted_reads(frames, dy, dx)
    assert out.shape == (1, 2, 2, 3, 8, 8)
    assert torch.equal(out[0, 0, 0], frames[0, 0])  # no displacement
    # candidate 1 of frame 0 reads (y - 1, x - 2): the pixel appears one row down, two columns right
    assert torch.allclose(out[0, 0, 1, :, 3, 5], torch.tensor([0.2, 0.5, 0.9]))
    assert out[0, 0, 1].sum() == pytest.approx(1.6)
    frames[0, 1, :, 7, 7] = 1.0
    assert (shifted_reads(frames, dy, dx)[0, 1, 0, :, 6:, 4:] == 1.0).all()  # beyond the corner: the corner


def _square_video(velocity, frames=6, size=16):
    video = -torch.ones(1, 3, frames, size, size)
    for f in range(frames):
        y, x = 4 + velocity[0] * f, 3 + velocity[1] * f
        video[0, :, f, y:y + 3, x:x + 3] = torch.tensor([0.8, -0.2, 0.4])[:, None, None] * torch.tensor(
            [[1.0, 0.5, 1.0], [0.5, 1.0, 0.7], [1.0, 0.7, 0.4]])  # textured: one velocity matches it
    return video


def test_warp_head_continues_the_given_frames_at_their_velocity():
    head = WarpHead(radius=2)
    video = _square_video((1, 2))
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)
    k = head.num_candidates
    raw[:, k + 1] = 20.0  # blend: all warp
    raw[:, k + 2:] = 0.125  # F passes through as the first C channels
    out = head(raw, head.match(video, mask))
    assert out.shape == (1, 6, 6, 16, 16) and (out[:, :3] == 0.125).all()
    prior = out[:, 3:]
    # untrained (zero logits and salience), the cost volume and the motion evidence alone put the
    # square, moving 1 down and 2 right per frame, where its velocity takes it in frames 2-4
    error = (prior[:, :, 2:5] - video[:, :, 2:5]).abs()
    assert error.max() < 0.15 and error.mean() < 0.01
    # without a given frame there is no prior; with one, the velocity is open (a blurred mean)
    assert (head(raw, head.match(video, torch.zeros(1, 6)))[:, 3:] == 0).all()
    one = head(raw, head.match(video, torch.tensor([[1.0, 0, 0, 0, 0, 0]])))[:, 3:]
    assert (one[:, :, 3] - video[:, :, 3]).abs().max() > 0.3


def test_channel_norm_keeps_a_digits_colour_where_group_norm_removes_it():
    glyph = (torch.rand(1, 1, 2, 8, 8) > 0.7).float()

    def features(colour):
        video = glyph * torch.tensor(colour)[None, :, None, None, None] * 2 - 1  # a digit on black
        conv = torch.nn.Conv3d(3, 8, 1)
        torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
        return conv(video)

    dim, bright = features([0.4, 0.2, 0.2]), features([1.0, 0.5, 0.5])
    group = GroupNorm32(8, 8)  # one channel per group, as gcd(32, 32) gives the tiny preset
    assert torch.allclose(group(dim), group(bright), atol=2e-3)  # the colour's brightness is gone
    channel = ChannelNorm(8)
    assert (channel(dim) - channel(bright)).abs().max() > 0.1


def test_sigma_data_skip_passes_near_clean_inputs_through():
    cfg = micro_config(predict_xstart=True, noise_schedule="cosine", sigma_data=0.5)
    diffusion = create_diffusion(cfg)
    x0 = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    low, high = torch.tensor([0, 0]), torch.tensor([99, 99])
    zero_output = torch.zeros_like(x0)
    near = diffusion.xstart_from_output(zero_output, diffusion.q_sample(x0, low), low)
    assert (near - x0).abs().mean() < 0.05  # at t = 0 the input is the answer, for free
    far = diffusion.xstart_from_output(zero_output, diffusion.q_sample(x0, high), high)
    assert far.abs().mean() < 0.05  # at t = T-1 the output (here 0) is the answer
    off = create_diffusion(micro_config(predict_xstart=True, noise_schedule="cosine"))
    assert torch.equal(off.xstart_from_output(zero_output, x0, low), zero_output)
    # around a prior mean W (the warp head's [F, W]): W at high noise, the input at low noise
    prior = create_diffusion(micro_config(predict_xstart=True, noise_schedule="cosine", sigma_data=0.5,
                                          output_head="warp", given_frame_input=True))
    w = torch.rand_like(x0)
    out = torch.cat([zero_output, w], dim=1)
    assert (prior.xstart_from_output(out, diffusion.q_sample(x0, high), high) - w).abs().mean() < 0.05
    assert (prior.xstart_from_output(out, diffusion.q_sample(x0, low), low) - x0).abs().mean() < 0.05
    # the correction's target has about unit scale at every level: at low noise it is minus the noise
    noise = torch.randn_like(x0)
    mid = torch.tensor([20, 20])
    target = (x0 - prior.xstart_from_output(out, diffusion.q_sample(x0, mid, noise), mid)) / prior.extract(
        "edm_c_out", mid, 5)
    assert 0.3 < target.std() < 3


@pytest.mark.parametrize("kw", [dict(norm="channel"), dict(output_head="warp", given_frame_input=True,
                                                          predict_xstart=True),
                                dict(norm="channel", output_head="warp", given_frame_input=True, sigma_data=0.5,
                                     predict_xstart=True, patch_size=2, image_size=32),
                                dict(output_head="warp", given_frame_input=True, warp_input=True, predict_xstart=True),
                                dict(output_head="warp", given_frame_input=True, warp_gate=True, predict_xstart=True),
                                dict(output_head="warp", given_frame_input=True, warp_exact=True, warp_deadzone=True,
                                     warp_inside_cost=True, predict_xstart=True),
                                dict(output_head="warp", given_frame_input=True, warp_exact=True, warp_objects=True,
                                     predict_xstart=True),
                                dict(output_head="warp", given_frame_input=True, warp_exact=True, warp_objects=True,
                                     warp_gate=True, sigma_data=0.5, predict_xstart=True),
                                dict(output_head="warp", given_frame_input=True, warp_exact=True, warp_objects=True,
                                     warp_gate=True, warp_verdict="pixel", predict_xstart=True)])
def test_each_lever_trains(kw):
    torch.manual_seed(0)
    cfg = micro_config(**kw)
    validate(cfg)
    model, diffusion = create_model(cfg), create_diffusion(cfg)
    size = cfg.model.image_size
    x = torch.rand(2, 3, 4, size, size) * 2 - 1
    mask = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = diffusion.training_losses(model, x, torch.tensor([30, 60]), obs_mask=mask,
                                         noise=torch.randn_like(x))["loss"].mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < losses[0]


def test_bad_lever_combinations_are_named():
    with pytest.raises(ValueError, match="--output_head warp needs --given_frame_input"):
        validate(micro_config(output_head="warp"))
    with pytest.raises(ValueError, match="--sigma_data needs --predict_xstart"):
        validate(micro_config(sigma_data=0.5))
    with pytest.raises(ValueError, match="--output_head warp needs --predict_xstart"):
        validate(micro_config(output_head="warp", given_frame_input=True))
    with pytest.raises(ValueError, match="learn_sigma"):
        validate(micro_config(output_head="warp", given_frame_input=True, predict_xstart=True, learn_sigma=True))
    with pytest.raises(ValueError, match="--warp_input needs --output_head warp"):
        validate(micro_config(warp_input=True, given_frame_input=True))
    for name in ("warp_gate", "warp_exact", "warp_deadzone", "warp_inside_cost", "warp_objects"):
        with pytest.raises(ValueError, match=f"--{name} needs --output_head warp"):
            validate(micro_config(**{name: True}, given_frame_input=True))
    with pytest.raises(ValueError, match="--warp_verdict pixel needs --warp_objects and --warp_gate"):
        validate(micro_config(output_head="warp", given_frame_input=True, predict_xstart=True, warp_objects=True,
                              warp_verdict="pixel"))


def test_the_gate_keeps_the_correction_out_where_the_given_frames_explain_the_warp():
    video = _square_video((1, 2))
    raw = torch.zeros(1, WarpHead(2).num_outputs(3), 6, 16, 16)
    raw[:, WarpHead(2).num_candidates + 2:] = 0.5  # a correction everywhere
    two, one = torch.tensor([[1.0, 1, 0, 0, 0, 0]]), torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    gated, plain = WarpHead(2, gate=True), WarpHead(2)
    f_two = gated(raw, gated.match(video, two))[:, :3]
    # the square and the background it moves over are explained by one velocity: no correction there
    assert f_two[:, :, 2:5].abs().mean() < 0.05 and torch.equal(plain(raw, plain.match(video, two))[:, :3],
                                                                 raw[:, -3:])
    # one given frame leaves the velocity open: the correction passes whole
    assert torch.allclose(gated(raw, gated.match(video, one))[:, :3], raw[:, -3:])


def test_the_unlearned_warp_is_the_heads_warp_with_nothing_learned_and_feeds_the_network():
    head = WarpHead(radius=2)
    video = _square_video((1, 2))
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    match = head.match(video, mask)
    raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)
    raw[:, head.num_candidates + 1] = 40.0  # blend all the way to the warp
    assert torch.allclose(head(raw, match)[:, 3:], match.unlearned, atol=1e-6)
    # with --warp_input the network takes W_0 as input channels, computed once per call (the head reuses it)
    cfg = micro_config(output_head="warp", given_frame_input=True, warp_input=True, predict_xstart=True,
                       warp_radius=2)
    model = create_model(cfg)
    assert model.input_blocks[0][0].in_channels == 3 * 3 + 2  # frames, nearest given frame, W_0, mask, offset
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("head."):  # the head keeps its cost weights (beta, gamma)
                p.normal_(0, 0.1)
    x = video[:, :, :4]
    m = mask[:, :4]
    seen = []
    model.head.match = lambda x_, m_, orig=model.head.match: seen.append(orig(x_, m_)) or seen[-1]
    model(x, torch.tensor([5]), obs_mask=m)
    assert len(seen) == 1 and torch.equal(seen[0].unlearned, head.match(x, m).unlearned)


def test_the_exact_head_reproduces_a_freely_moving_square_to_the_grey_level_and_the_deadzone_keeps_it():
    video = _square_video((1, 2))
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    grey = 2.0 / 255.0
    errors = {}
    for exact in (False, True):
        head = WarpHead(2, exact=exact)
        raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)  # an untrained network's output
        w = head(raw, head.match(video, mask))[:, 3:]
        errors[exact] = (w - video)[:, :, 2:].abs().max().item()
    # sigmoid(3) = 0.953 leaves the black background at grey level 6; the exact head is right to
    # well under half a level everywhere (it rounds to the true uint8 frame)
    assert errors[False] > 5 * grey and errors[True] < 0.5 * grey, errors
    head = WarpHead(2, exact=True, deadzone=True)
    raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)
    f = raw[:, head.num_candidates + 2:]
    f[:, :, :, :8] = 0.4 * grey  # under a grey level: counts 1%
    f[:, :, :, 8:] = 0.5  # a real correction passes, less the dead zone
    out = head(raw, head.match(video, mask))[:, :3]
    assert torch.allclose(out[:, :, :, :8], torch.full_like(out[:, :, :, :8], 0.004 * grey))
    assert torch.allclose(out[:, :, :, 8:], torch.full_like(out[:, :, :, 8:], 0.5 - 0.99 * grey))


def test_reads_from_outside_the_frame_are_left_out_of_the_cost():
    # a textured square that touches the top border in the first given frame and moves away from it
    video = -torch.ones(1, 3, 6, 16, 16)
    texture = torch.tensor([[1.0, 0.5, 1.0, 0.3], [0.5, 1.0, 0.7, 0.2], [1.0, 0.7, 0.4, 0.9], [0.6, 0.2, 0.8, 1.0]])
    for f in range(6):
        y, x = 2 * f, 3 + f
        video[0, :, f, y:y + 4, x:x + 4] = torch.tensor([0.8, -0.2, 0.4])[:, None, None] * texture
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    errors = {}
    for inside in (False, True):
        head = WarpHead(2, exact=True, inside_only=inside)
        raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)
        errors[inside] = (head(raw, head.match(video, mask))[:, 3:] - video)[:, :, 2:].abs().max().item()
    # clamped, the reads above the frame return the square's own top row, so its true velocity
    # looks wrong near the border and part of it is lost; left out, the square is carried exactly
    assert errors[False] > 0.5 and errors[True] < 1e-5, errors


def test_the_object_head_starts_as_the_tracker_and_carries_a_bounce():
    # a square moving right 2 px per frame from x = 9 in a 16 px frame: it reflects off the border
    video = -torch.ones(1, 3, 6, 16, 16)
    x = [9, 11, 11, 9, 7, 5]  # the generator's rule: 13 is past the limit 12 and reflects to 11
    for f in range(6):  # a colour on the uint8 grid, as data frames are
        video[0, :, f, 5:9, x[f]:x[f] + 4] = (torch.tensor([230.0, 102, 178]) / 127.5 - 1)[:, None, None]
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    errors = {}
    for objects in (False, True):
        head = WarpHead(2, exact=True, objects=objects)
        raw = torch.zeros(1, head.num_outputs(3), 6, 16, 16)  # an untrained network's output
        errors[objects] = (head(raw, head.match(video, mask))[:, 3:] - video)[:, :, 2:].abs().max().item()
    # the block matcher carries the square on into the border; the tracker reflects it exactly
    assert errors[False] > 0.5 and errors[True] < 1e-6, errors


def test_the_tracker_runs_once_for_the_same_given_frames(monkeypatch):
    from video_diffusion.models import warp

    video = _square_video((1, 2))
    mask = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    memo, calls = {}, []
    original = warp.track
    monkeypatch.setattr(warp, "track", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = warp.tracked(video, mask, 2, memo)
    noisy = video.clone()
    noisy[:, :, 2:] = torch.randn_like(noisy[:, :, 2:])  # a sampler's next call: other noise, same given frames
    assert warp.tracked(noisy, mask, 2, memo) is first and len(calls) == 1
    moved = video.roll(1, dims=-1)
    assert not torch.equal(warp.tracked(moved, mask, 2, memo)[0], first[0]) and len(calls) == 2


def test_the_gated_object_head_keeps_what_the_tracker_explains_and_corrects_the_rest():
    # a textured square moving at (1, 2): the tracker explains it; the same square changing colour
    # between the given frames is not explained (nothing moved on redraws the second frame)
    video = _square_video((1, 2))
    on_grid = ((video + 1) * 127.5).round() / 127.5 - 1  # the tracker works on uint8 levels
    raw = torch.randn(1, WarpHead(2).num_outputs(3), 6, 16, 16)  # an arbitrary network output
    two, one = torch.tensor([[1.0, 1, 0, 0, 0, 0]]), torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    head = WarpHead(2, exact=True, objects=True, gate=True)
    correction, prior = head(raw, head.match(video, two)).split(3, dim=1)
    # explained: x_0 = W_0 exactly, whatever the network says
    assert torch.equal(correction[:, :, 2:], torch.zeros_like(correction[:, :, 2:]))
    assert (prior - on_grid)[:, :, 2:].abs().max() < 1e-6
    # one given frame: nothing to explain it by, so the network's correction and blend pass whole
    correction, _ = head(raw, head.match(video, one)).split(3, dim=1)
    assert torch.equal(correction[:, :, 1:], raw[:, -3:, 1:])
    changed = video.clone()
    changed[:, 0, 1] = -changed[:, 0, 1]  # the second given frame no longer follows from the first
    correction, _ = head(raw, head.match(changed, two)).split(3, dim=1)
    assert torch.equal(correction[:, :, 2:], raw[:, -3:, 2:])


def test_the_verdict_per_pixel_holds_the_trackers_digits_in_a_frame_it_does_not_explain():
    frames = digits_behind_each_other(6)  # a 3 behind an 8 in the given frame 1, a 1 far from both
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    two = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    raw = torch.randn(1, WarpHead(2).num_outputs(3), 6, 32, 32)  # an arbitrary network output
    by_frame, by_pixel = (WarpHead(2, exact=True, objects=True, gate=True, verdict=v) for v in ("frame", "pixel"))
    c = by_pixel.match(video, two).confidence
    assert c.shape == (1, 1, 6, 32, 32) and not by_frame.match(video, two).confidence[:, :, 2:].any()
    held = c[0, 0, 2:].bool()
    assert 0.5 < held.float().mean() < 1.0
    correction, prior = by_pixel(raw, by_pixel.match(video, two)).split(3, dim=1)
    tracker = torch.from_numpy(track(frames, [0, 1])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    # held pixels: x_0 = W + F is the tracker's, whatever the network says; the others pass F whole
    assert torch.equal(correction[0, :, 2:][:, held], torch.zeros(3, int(held.sum())))
    assert (prior[0, :, 2:][:, held] - tracker[0, :, 2:][:, held]).abs().max() < 1e-6
    assert torch.equal(correction[0, :, 2:][:, ~held], raw[0, -3:, 2:][:, ~held])
    with pytest.raises(ValueError, match="needs objects and gate"):
        WarpHead(2, objects=True, verdict="pixel")


def test_with_edms_skip_the_gate_still_holds_the_trackers_frames_and_the_rest_get_the_skip():
    # the tiny recipe's head (objects, gate) with --sigma_data: the skip passes the noisy input
    # through at low noise, which must not reach the frames the gate holds to the tracker
    cfg = micro_config(output_head="warp", given_frame_input=True, predict_xstart=True, warp_exact=True,
                       warp_objects=True, warp_gate=True, sigma_data=0.5, image_size=16, seq_len=6)
    validate(cfg)
    torch.manual_seed(0)
    model, diffusion = create_model(cfg), create_diffusion(cfg)
    for p in model.parameters():  # an arbitrary network, not the zero-initialised output
        p.data.normal_(0, 0.05)
    video = ((_square_video((1, 2)) + 1) * 127.5).round() / 127.5 - 1  # on the tracker's grey levels
    changed = video.clone()
    changed[:, 0, 1] = -changed[:, 0, 1]  # the second given frame no longer follows from the first
    two = torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    observed = two[:, None, :, None, None].bool()
    for t in (2, 50, 99):  # of the micro process's 100 steps
        tt = torch.tensor([t])
        x_t = torch.where(observed, video, diffusion.q_sample(video, tt))
        with torch.no_grad():
            out = model(x_t, tt, obs_mask=two)
        assert out.shape[1] == 7  # [F, W, c]
        x0 = diffusion.xstart_from_output(out, x_t, tt)
        assert (x0 - video)[:, :, 2:].abs().max() < 1e-5, t  # explained: the tracker's, whatever the noise
        x_c = torch.where(observed, changed, diffusion.q_sample(changed, tt))
        with torch.no_grad():
            out = model(x_c, tt, obs_mask=two)
        assert (out[:, 6:, 2:] == 0).all()  # not explained: nothing held
        naive = diffusion.extract("sqrt_recip_alphas_cumprod", tt, 5) * x_c
        skip = diffusion.extract("edm_c_skip", tt, 5)
        expected = out[:, 3:6] + skip * (naive - out[:, 3:6]) + diffusion.extract("edm_c_out", tt, 5) * out[:, :3]
        assert torch.allclose(diffusion.xstart_from_output(out, x_c, tt)[:, :, 2:], expected[:, :, 2:],
                              atol=1e-6)
    # without the skip the head keeps its two parts
    assert create_model(micro_config(output_head="warp", given_frame_input=True, predict_xstart=True,
                                     warp_gate=True)).head.hold is False
