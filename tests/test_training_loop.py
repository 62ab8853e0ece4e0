"""The shared train loop's weight averaging (train.ema_decay): what is validated, kept and returned."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lsst_spark_ml.config import TrainSettings
from lsst_spark_ml.errors import ConfigError
from lsst_spark_ml.training.loop import fit


def _run(ema_decay):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(256, 3, generator=g), torch.randint(0, 2, (256,), generator=g)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))
    after_step = []

    def batches(epoch):
        for s in range(0, 256, 32):
            yield X[s:s + 32], y[s:s + 32]
            # the loop asks for the next batch after the optimiser step: these are the weights it produced
            after_step.append([p.detach().clone() for p in model.parameters()])

    ts = TrainSettings(max_epochs=1, early_stop_patience=None, lr=0.05, ema_decay=ema_decay)
    res = fit(model, nn.functional.cross_entropy, batches, lambda: [(X, y)], ts, log=lambda m: None,
              progress=False)
    return res, after_step, model


def test_ema_weights_are_validated_and_returned():
    d = 0.8
    res, after_step, model = _run(d)
    avg = [p.clone() for p in after_step[0]]                # torch's EMA starts from the first step's weights
    for ps in after_step[1:]:
        avg = [d * a + (1 - d) * p for a, p in zip(avg, ps)]
    returned = [v for k, v in res.best_state.items() if "running" not in k and "num_batches" not in k]
    assert len(returned) == len(avg)
    for a, r in zip(avg, returned):
        torch.testing.assert_close(r, a, rtol=1e-5, atol=1e-6)
    # BatchNorm statistics are the live model's, not averaged
    live = dict(model.named_buffers())
    assert torch.equal(res.best_state["1.running_mean"], live["1.running_mean"])
    # and the averaged weights differ from the last raw ones (the test could not pass without averaging)
    assert not torch.allclose(returned[0], after_step[-1][0])


def test_without_ema_the_last_weights_are_returned():
    res, after_step, _ = _run(None)
    torch.testing.assert_close(res.best_state["0.weight"], after_step[-1][0])


@pytest.mark.parametrize("key", ["train.ema_decay", "morphology.ema_decay"])
def test_ema_decay_outside_0_1_is_refused(key):
    from lsst_spark_ml.config import load_config
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], [f"{key}=1.5"])


def test_a_forward_with_state_answers_training_batches_and_resumes_from_the_checkpoint(tmp_path):
    class Counting:
        """Doubles the logits of training batches and counts the steps it answered."""
        def __init__(self):
            self.steps = 0

        def __call__(self, net, x, y):
            self.steps += 1
            return 2 * net(x)

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    ckpt = str(tmp_path / "ckpt")

    def run(epochs):
        torch.manual_seed(0)
        fwd = Counting()
        res = fit(nn.Linear(3, 2), nn.functional.cross_entropy, lambda e: [(X[s:s + 16], y[s:s + 16])
                                                                          for s in range(0, 64, 16)],
                  lambda: [(X, y)], TrainSettings(max_epochs=epochs, early_stop_patience=None, lr=0.05),
                  log=lambda m: None, progress=False, checkpoint_dir=ckpt, fingerprint="f", forward=fwd)
        return res, fwd
    res, fwd = run(2)
    assert fwd.steps == 8 and res.history[0]["train_loss"] > 0
    res, fwd = run(3)                                   # resumes after epoch 2 with the forward's state
    assert res.resumed_from_epoch == 2 and fwd.steps == 12
