"""The assembled model: splicing, label masking, padding, frame independence, generation from the state."""
import pytest
import torch
import torch.nn.functional as F

from aurora.model import AuroraModel
from aurora.types import IGNORE_INDEX, VIDEO_TOKEN

VISION = dict(name="siglip", hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8, feature_layer=-2)
MERGE = dict(name="tome", keep_ratio=0.5, order="size_ascending")
RNN = dict(name="rwkv6", vocab_size=300, d_model=64, n_layer=2, head_size=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AuroraModel.from_specs(vision=VISION, merge=MERGE, projector="mlp", rnn=RNN).double().eval()
    # random (not zero-initialised) output projections so every path carries signal
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def sample(prompt_len=5, answer_len=3, frames=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (prompt_len + answer_len,), generator=g)
    ids[2] = VIDEO_TOKEN
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[prompt_len:] = ids[prompt_len:]
    pixels = torch.randn(1, frames, 3, 32, 32, generator=g, dtype=torch.float64)
    return pixels, ids[None], labels[None]


def test_projector_is_wired_between_vision_and_rnn(model):
    assert model.projector.net[0].in_features == model.vision.out_dim
    assert model.projector.net[-1].out_features == model.rnn.d_model


def test_video_tokens_per_frame_as_predicted_and_frames_independent(model):
    pixels, _, _ = sample(frames=3)
    video, vt = model.encode_video(pixels)
    n = model.vision.tokens_per_frame(32, 32)
    assert video.shape == (1, 3 * n, 64)
    assert torch.all(vt.sizes.sum(-1) == 16)
    swapped, _ = model.encode_video(pixels[:, [2, 1, 0]])
    assert torch.allclose(swapped[0, :n], video[0, 2 * n :]) and torch.allclose(swapped[0, 2 * n :], video[0, :n])


def test_splice_places_video_at_placeholder_and_masks_its_labels(model):
    pixels, ids, labels = sample()
    video, _ = model.encode_video(pixels)
    embeds, lab = model.splice(ids, video, labels)
    v = video.shape[1]
    assert embeds.shape[1] == ids.shape[1] - 1 + v
    assert torch.equal(embeds[0, 2 : 2 + v], video[0])
    assert torch.equal(embeds[0, :2], model.rnn.embed(ids[0, :2]))
    assert torch.all(lab[0, 2 : 2 + v] == IGNORE_INDEX)
    assert torch.equal(lab[0, 2 + v :], labels[0, 3:])


@pytest.mark.parametrize("count", [0, 2])
def test_splice_rejects_wrong_placeholder_count(model, count):
    pixels, ids, labels = sample()
    ids = ids.clone()
    ids[0, 2] = 5
    if count == 2:
        ids[0, 1] = ids[0, 3] = VIDEO_TOKEN
    video, _ = model.encode_video(pixels)
    with pytest.raises(ValueError, match="exactly one video placeholder"):
        model.splice(ids, video, labels)


def test_loss_counts_answer_tokens_only(model):
    pixels, ids, labels = sample()
    out = model(pixels, ids, labels)
    assert out.num_tokens == 3
    video, _ = model.encode_video(pixels)
    embeds, lab = model.splice(ids, video, labels)
    hidden, _ = model.rnn(embeds)
    logits = model.rnn.logits(hidden)[0, :-1]
    tgt = lab[0, 1:]
    keep = tgt != IGNORE_INDEX
    assert torch.allclose(out.loss, F.cross_entropy(logits[keep].float(), tgt[keep]), atol=1e-6)
    # changing a prompt token's label to "ignored" changes nothing, since it was ignored already
    no_answer = torch.full_like(labels, IGNORE_INDEX)
    with pytest.raises(ValueError, match="no answer tokens"):
        model(pixels, ids, no_answer)


def test_right_padding_does_not_change_the_loss(model):
    pixels, ids, labels = sample()
    a = model(pixels, ids, labels).loss
    pad_ids = torch.cat([ids, torch.zeros(1, 4, dtype=ids.dtype)], 1)
    pad_labels = torch.cat([labels, torch.full((1, 4), IGNORE_INDEX)], 1)
    b = model(pixels, pad_ids, pad_labels).loss
    assert torch.allclose(a, b, atol=1e-10)
    # and a batch of two gives each sample's tokens the same logits as alone
    p2, i2, l2 = sample(prompt_len=7, answer_len=2, seed=1)
    both = model(torch.cat([pixels, p2]), torch.cat([pad_ids[:, :9], i2]), torch.cat([pad_labels[:, :9], l2]))
    alone2 = model(p2, i2, l2)
    assert torch.allclose(both.loss, (a * 3 + alone2.loss * 2) / 5, atol=1e-8)


def test_greedy_generation_from_state_matches_full_recompute(model):
    pixels, ids, _ = sample()
    prompt = ids[:, :5]
    out = model.generate(pixels, prompt, max_new_tokens=5, eos_id=None)
    assert len(out) == 5
    video, _ = model.encode_video(pixels)
    seq = torch.cat([prompt, torch.tensor([out])], 1)
    embeds, _ = model.splice(seq, video)
    hidden, _ = model.rnn(embeds)
    greedy = model.rnn.logits(hidden).argmax(-1)[0]
    v = video.shape[1]
    start = 5 - 1 + v - 1  # logits at the last prompt position predict the first new token
    assert greedy[start : start + 5].tolist() == out


def test_generation_stops_at_stop_sequence(model):
    pixels, ids, _ = sample()
    free = model.generate(pixels, ids[:, :5], max_new_tokens=6, eos_id=None)
    stopped = model.generate(pixels, ids[:, :5], max_new_tokens=6, stop_ids=[free[2:4]], eos_id=None)
    assert stopped == free[:2]


def test_batched_generation_equals_one_sample_at_a_time(model):
    samples = [sample(prompt_len=n, seed=s) for n, s in ((5, 0), (7, 1), (5, 2))]
    pixels = torch.cat([p for p, _, _ in samples])
    prompts = [ids[0, :n] for (_, ids, _), n in zip(samples, (5, 7, 5))]
    alone = [model.generate(p, ids[None], max_new_tokens=4, eos_id=None) for (p, _, _), ids in zip(samples, prompts)]
    together = model.generate_batch(pixels, prompts, max_new_tokens=4, eos_id=None)
    assert together == alone and all(len(o) == 4 for o in together)
    # a stop sequence ends one row early without touching the others
    stop = alone[1][1:3]
    stopped = model.generate_batch(pixels, prompts, max_new_tokens=4, stop_ids=[stop], eos_id=None)
    assert stopped[1] == alone[1][:1]
    assert stopped == [model.generate(p, ids[None], max_new_tokens=4, stop_ids=[stop], eos_id=None)
                       for (p, _, _), ids in zip(samples, prompts)]
    with pytest.raises(ValueError, match="3 videos for 2 prompts"):
        model.generate_batch(pixels, prompts[:2])
