"""fx / torch.export plumbing shared by passes, calibration and backends: node meta (:mod:`.meta`), program copy and
re-export (:mod:`.export`), the linear helpers (:mod:`.linears`), the observed interpreter (:mod:`.interpret`) and
the block runner (:mod:`.blocks`)."""
