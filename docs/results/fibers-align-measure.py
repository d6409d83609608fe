import random, time, statistics, torch, phalanx
from phalanx.models.branchy import BranchyChain
rng = random.Random(0); gen = torch.Generator().manual_seed(0)
data = [(torch.randn(512, generator=gen), [rng.randrange(10) for _ in range(rng.randrange(1, 20))]) for _ in range(64)]
for aligned in (False, True):
    torch.manual_seed(0); m = BranchyChain(512, aligned=aligned)
    for pol in ("depth", "agenda"):
        b = phalanx.Batcher(m, policy=pol); ts = []
        with torch.no_grad():
            b(data)
            for _ in range(5):
                t = time.perf_counter(); b(data); ts.append(time.perf_counter() - t)
        print(f"aligned={aligned} policy={pol} batches={b.stats.batches} lower_bound={b.stats.lower_bound} median_ms={1e3*statistics.median(ts):.1f}")
