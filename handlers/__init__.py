"""One module per job step; each exposes `async def run(ctx, inputs) -> outputs` and persists nothing itself."""
