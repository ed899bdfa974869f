import torch

from camodet.engine import measure
from camodet.engine.step import CompiledOrEager
from camodet.engine.trainer import Trainer
from camodet.options import PlanOptions, PlanSettings
from camodet.tune.memory_plan import plan_command

from ..conftest import tiny_config


def test_card_peak_adds_what_the_process_holds_outside_the_allocator(monkeypatch):
    gib = 2**30
    # 80 GiB card, 10.5 GiB in use by this process, 9 GiB of it the allocator's: 1.5 GiB context
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (69.5 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 9 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 11 * gib)
    assert measure.cuda_card_peak_mb(torch.device("cuda", 0)) == 12.5 * 1024


def test_a_measurement_that_outruns_its_timeout_is_a_failed_one():
    spec = {
        "model_cfg": {"backbone": "edgenext_xx_small", "num_experts": 2},
        "img_size": 64,
        "batch": 2,
        "stage": 2,
        "device": "cpu",
    }
    r = measure.measure_in_subprocess(timeout=0.5, **spec)
    assert r == {"stage": 2, "batch": 2, "error": "timed out after 0.5 s"}


def param_groups(optimizer) -> list[tuple]:
    return [
        (g["weight_decay"], g["backbone_group"], [tuple(p.shape) for p in g["params"]])
        for g in optimizer.param_groups
    ]


def test_the_step_plan_measures_is_the_step_the_trainer_trains(synth_root, tmp_path, monkeypatch):
    """What `camodet plan` (and the speed benchmarks, through measure_step) measures for a run is
    the trainer's own step for it: the same loss settings, compile wrapper, optimizer groups,
    scaler, precision, EMA and trainable set, and one update of each from the same weights on the
    same batch gives the same weights."""
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: module)  # no inductor build here
    cfg = tiny_config(
        synth_root,
        tmp_path / "run",
        boundary_gain=2.0,
        moe_loss_weight=0.05,
        weight_decay=0.05,
        grad_clip=0.5,
        use_ema=True,
        ema_decay=0.9,
        compile=True,
    )
    specs = []

    def measured_elsewhere(timeout=None, **spec):  # the subprocess: its spec kept, numbers made up
        specs.append(spec)
        return {
            "stage": spec["stage"],
            "batch": spec["batch"],
            "s_per_step": 0.1,
            "peak_mb": 1.0,
            "memory": "cpu_rss",
        }

    monkeypatch.setattr(measure, "measure_in_subprocess", measured_elsewhere)
    settings = PlanSettings(
        gpu_memory="64GB", candidates=[2], steps=1, effective_batch=8, out_dir=str(tmp_path / "plans")
    )
    plan_command(PlanOptions(train=cfg, plan=settings), True)
    built, trainer_step = [], measure.trainer_step
    monkeypatch.setattr(measure, "trainer_step", lambda *a: built.append(a) or trainer_step(*a))
    measure.measure_step(**next(s for s in specs if s["stage"] == 1))
    measured = trainer_step(*built[0])  # a fresh one, as the measurement started with

    trainer = Trainer(cfg)
    trainer.before_train()
    trainer.enter_stage(trainer.first_epoch)  # stage 1
    trained = trainer.step
    assert measured.loss == trained.loss
    assert type(measured.forward) is type(trained.forward) is CompiledOrEager
    assert param_groups(measured.optimizer) == param_groups(trained.optimizer)
    assert measured.optimizer.defaults == trained.optimizer.defaults
    assert (measured.scaler.is_enabled(), measured.dtype, measured.memory_format) == (
        trained.scaler.is_enabled(),
        trained.dtype,
        trained.memory_format,
    )
    assert (type(measured.ema), measured.ema.decay) == (type(trained.ema), trained.ema.decay)
    assert [p.requires_grad for p in measured.model.parameters()] == [
        p.requires_grad for p in trained.model.parameters()
    ]

    measured.model.load_state_dict(trained.model.state_dict())
    measured.ema.module.load_state_dict(trained.ema.module.state_dict())
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": (torch.rand(2, 1, 64, 64) > 0.7).float()}
    for step in (measured, trained):
        step.wrapped.train()
        for group in step.optimizer.param_groups:
            group["lr"] = 1e-3
        torch.manual_seed(0)
        measure.optimizer_step(step, batch, cfg.optim.grad_clip)
    for a, b in ((measured.model, trained.model), (measured.ema.module, trained.ema.module)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
