"""The five stages. Each module has ``run(..., cfg, ctx)`` and writes its artifacts to ``ctx.workdir``."""
