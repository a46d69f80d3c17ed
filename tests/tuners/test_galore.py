"""GaLore (mindformers/tuners/galore): the compiled optimizer against a numpy implementation of the same
algorithm (projection from the SVD every update_proj_gap steps, moments in the projected space, AdamW
elsewhere), gradient accumulation projecting the accumulated gradient, the projection taken after the
all-reduce, optimizer-state bytes, selection through TrainingArguments, and a fine-tune on the chats."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn
from safetensors.numpy import load_file

from mindformers import Trainer, TrainingArguments
from mindformers.models.common.layers import Linear
from mindformers.trainer.callbacks import TrainerCallback
from mindformers.tuners.galore import GaLoreAdamW, GaLoreConfig, galore_targets, projected_shape, state_bytes
from tests.trainer import conftest as trainer_fixtures
from tests.trainer.conftest import tiny_llama

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures

FACTORS = [1.0, 0.5, 1.0, 0.25, 1.0]
BETAS, EPS = (0.9, 0.95), 1e-6


class Block(nn.Cell):
    """A tall and a wide projected weight, and a vector that takes plain AdamW."""

    def __init__(self, rng):
        super().__init__()
        self.attn = Linear(4, 6, bias=False)  # weight [6, 4]: rows >= cols -> right projection
        self.mlp = Linear(7, 3, bias=False)  # weight [3, 7]: left projection
        self.norm = Parameter(Tensor(rng.normal(size=(5,)).astype(np.float32)), name="norm")
        for cell in (self.attn, self.mlp):
            cell.weight.set_data(Tensor(rng.normal(size=cell.weight.shape).astype(np.float32)))


def canonical(vectors):
    """Columns flipped so their largest-magnitude entry is positive (the optimizer's sign rule)."""
    pick = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])]
    return vectors * np.where(pick >= 0, 1.0, -1.0)


def reference(weight, grads, factors, peak, decay, rank, gap, scale, proj_type="std"):
    """GaLore-AdamW in float64 numpy, step by step."""
    p, m, v, proj = weight.astype(np.float64), 0.0, 0.0, None
    right = weight.shape[0] >= weight.shape[1] if proj_type == "std" else proj_type == "right"
    for t, (factor, grad) in enumerate(zip(factors, grads), start=1):
        g = grad.astype(np.float64)
        if (t - 1) % gap == 0:
            u, _, vh = np.linalg.svd(g, full_matrices=False)
            r = min(rank, *g.shape)
            proj = canonical(vh[:r].T).T if right else canonical(u[:, :r])
        low = g @ proj.T if right else proj.T @ g
        m = BETAS[0] * m + (1 - BETAS[0]) * low
        v = BETAS[1] * v + (1 - BETAS[1]) * low * low
        normed = (m / (1 - BETAS[0] ** t)) / (np.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
        back = normed @ proj if right else proj @ normed
        lr = peak * factor
        p = p - lr * (scale * back + decay * p)
    return p, m


def adamw_reference(weight, grads, factors, peak):
    p, m, v = weight.astype(np.float64), 0.0, 0.0
    for t, (factor, g) in enumerate(zip(factors, grads), start=1):
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        p = p - peak * factor * (m / (1 - BETAS[0] ** t)) / (np.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
    return p


def run_compiled(optimizer, grads):
    def apply(g, f, constants):
        return optimizer(g, f, constants)

    step = ms.jit(apply)
    for factor, grad in zip(FACTORS, grads):
        step(ms.mutable(tuple(Tensor(g) for g in grad)), Tensor(factor, ms.float32), optimizer.step_constants())


def test_galore_adamw_equals_numpy_reference():
    rng = np.random.default_rng(0)
    cell = Block(rng)
    start = [cell.attn.weight.asnumpy().copy(), cell.mlp.weight.asnumpy().copy(), cell.norm.asnumpy().copy()]
    grads = [[rng.normal(size=s.shape).astype(np.float32) for s in start] for _ in FACTORS]
    config = GaLoreConfig(rank=2, target_modules=["attn", "mlp"], update_proj_gap=2, galore_scale=0.5)
    optimizer = GaLoreAdamW({"params": [cell.attn.weight, cell.mlp.weight], "lr": 0.05, "weight_decay": 0.1},
                            [{"params": [cell.norm], "lr": 0.02, "weight_decay": 0.0}], config, betas=BETAS, eps=EPS)
    assert [p.shape for p in optimizer.projections] == [(2, 4), (3, 2)]  # right [r, n], left [m, r]
    assert [p.shape for p in optimizer.exp_avg] == [(6, 2), (2, 7), (5,)]
    run_compiled(optimizer, grads)
    for i, weight in enumerate([cell.attn.weight, cell.mlp.weight]):
        expected, moment = reference(start[i], [g[i] for g in grads], FACTORS, 0.05, 0.1, 2, 2, 0.5)
        np.testing.assert_allclose(weight.asnumpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(optimizer.exp_avg[i].asnumpy(), moment, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cell.norm.asnumpy(), adamw_reference(start[2], [g[2] for g in grads], FACTORS, 0.02),
                               rtol=1e-5, atol=1e-6)
    # rank >= min(m, n): the full-rank projection is orthogonal, so GaLore is AdamW in a rotated basis
    assert projected_shape((6, 4), 8, "std") == ((4, 4), (6, 4))
    assert float(optimizer.state_step.asnumpy()) == len(FACTORS)


def test_reference_sees_the_projection_refresh():
    """The comparison above is sensitive to when the projection is recomputed: never refreshing differs."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 4))
    grads = [rng.normal(size=(6, 4)) for _ in FACTORS]
    every2, _ = reference(weight, grads, FACTORS, 0.05, 0.1, 2, 2, 0.5)
    never, _ = reference(weight, grads, FACTORS, 0.05, 0.1, 2, 100, 0.5)
    assert np.abs(every2 - never).max() > 1e-3


def galore_args(out, **changes):
    fields = dict(output_dir=str(out), max_steps=3, batch_size=4, seq_length=64, learning_rate=2e-2, logging_steps=1,
                  save_steps=1, disable_tqdm=True, report_to=[], optim="galore_adamw",
                  optim_target_modules=["self_attn", "mlp"], optim_args="rank=4, update_proj_gap=1, scale=0.5")
    return TrainingArguments(**{**fields, **changes})


class Snapshots(TrainerCallback):
    """The model's weights after every step."""

    def __init__(self, model):
        self.model, self.weights = model, [self.take(model)]

    @staticmethod
    def take(model):
        return {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}

    def on_step_end(self, state, logs):
        self.weights.append(self.take(self.model))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok, small_chats):
    """Three GaLore steps of batch 4, in one batch and as 2 accumulated micro-batches of 2."""
    out = {}
    for name, fields in {"single": {}, "accumulated": {"batch_size": 2, "gradient_accumulation_steps": 2}}.items():
        model = tiny_llama()
        snapshots = Snapshots(model)
        path = tmp_path_factory.mktemp(name)
        trainer = Trainer(model=model, tokenizer=tok, args=galore_args(path, **fields), train_dataset=small_chats[0],
                          callbacks=[snapshots])
        state = trainer.train()
        out[name] = (path, snapshots.weights, [h["loss"] for h in state.log_history if "loss" in h], model)
    return out


def test_trainer_builds_galore_for_the_target_weights(runs):
    path, weights, losses, model = runs["single"]
    config = GaLoreConfig.from_training_args(galore_args(path))
    targets = galore_targets(model, config)
    assert len(targets) == 2 * 7 and all(".self_attn." in t or ".mlp." in t for t in targets)
    state = load_file(str(path / "checkpoint-1" / "optimizer.safetensors"))
    assert sorted(k[len("galore_proj."):] for k in state if k.startswith("galore_proj.")) == sorted(targets)
    for name in targets:  # the first update of a projected weight lies in the projection's span
        proj = state[f"galore_proj.{name}"].astype(np.float64)
        delta = (weights[1][name] - weights[0][name]).astype(np.float64)
        assert np.abs(delta).max() > 1e-4, name
        np.testing.assert_allclose(proj @ proj.T if proj.shape[0] < proj.shape[1] else proj.T @ proj, np.eye(4),
                                   atol=1e-5)
        inside = delta @ proj.T @ proj if proj.shape[0] < proj.shape[1] else proj @ proj.T @ delta
        np.testing.assert_allclose(inside, delta, atol=1e-6, err_msg=name)
    assert losses[-1] < losses[0], losses


def test_accumulation_projects_the_accumulated_gradient(runs):
    """Two accumulated micro-batches of 2 give the run of one batch of 4: same projections, weights, losses."""
    single, accumulated = runs["single"], runs["accumulated"]
    np.testing.assert_allclose(accumulated[2], single[2], rtol=1e-5)
    for step in (1, 3):  # projections from the first and the third step's gradients
        a = load_file(str(single[0] / f"checkpoint-{step}" / "optimizer.safetensors"))
        b = load_file(str(accumulated[0] / f"checkpoint-{step}" / "optimizer.safetensors"))
        for key in (k for k in a if k.startswith("galore_proj.")):
            np.testing.assert_allclose(b[key], a[key], atol=2e-4, err_msg=key)
    targets = [k[len("galore_proj."):] for k in a if k.startswith("galore_proj.")]
    for name in targets:
        np.testing.assert_allclose(accumulated[1][-1][name], single[1][-1][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_optimizer_state_bytes(runs):
    """The state the optimizer holds is what state_bytes counts, and less than AdamW's."""
    path, _, _, model = runs["single"]
    state = load_file(str(path / "checkpoint-3" / "optimizer.safetensors"))
    held = sum(v.nbytes for k, v in state.items() if k != "state_step")
    shapes = {n: tuple(p.shape) for n, p in model.parameters_and_names() if p.requires_grad}
    config = GaLoreConfig.from_training_args(galore_args(path))
    adamw, galore = state_bytes(shapes, galore_targets(model, config), config)
    assert held == galore and galore < adamw
    # one [64, 32] gate_proj: AdamW 2*64*32 values; GaLore rank 4 (right: P [4, 32], moments [64, 4])
    assert state_bytes({"w": (64, 32)}, ["w"], config) == (2 * 64 * 32 * 4, (2 * 64 * 4 + 4 * 32) * 4)


def test_bad_settings_are_refused(tmp_path, tok, small_chats):
    with pytest.raises(ValueError, match="'beta=1' is not a GaLore setting"):
        GaLoreConfig.from_training_args(galore_args(tmp_path, optim_args="rank=4, beta=1"))
    with pytest.raises(ValueError, match="GaLore needs target_modules"):
        GaLoreConfig.from_training_args(galore_args(tmp_path, optim_target_modules=None))
    with pytest.raises(ValueError, match="'full', projecting both sides, is not supported"):
        GaLoreConfig(target_modules=["attn"], proj_type="full")
    with pytest.raises(ValueError, match="configure optim='galore_adamw', found optim='adamw'"):
        TrainingArguments(optim="adamw", optim_target_modules=["attn"])
    trainer = Trainer(model=tiny_llama(), tokenizer=tok, train_dataset=small_chats[0],
                      args=galore_args(tmp_path, optim_target_modules=["attention"]))
    with pytest.raises(ValueError, match=r"target_modules \['attention'\] match no trainable Linear layer"):
        trainer.train()


def test_data_parallel_ranks_project_the_all_reduced_gradient(small_chats, tmp_path):
    """Two msrun workers (the harness of tests/trainer/test_data_parallel.py), each on its own half of the
    batch, projecting every step: identical weights, moments and projections on both ranks, which a projection
    of each rank's own gradient would not give (the halves differ). That the all-reduced gradient is the
    global batch's is tests/trainer/test_data_parallel.py's."""
    import os

    from tests.trainer.test_data_parallel import REPO, run_msrun

    worker = os.path.join(REPO, "tests", "tuners", "galore_dp_worker.py")
    run_msrun(worker, 2, [str(tmp_path), small_chats[0], "2", "2", "True"], tmp_path / "logs")
    rank0, rank1 = (dict(np.load(tmp_path / f"world2_rank{r}.npz")) for r in (0, 1))
    assert len([k for k in rank0 if k.startswith("optimizer/galore_proj.")]) == 14
    assert float(rank0["optimizer/state_step"]) == 2
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
