# Probe: a hand-written BiLSTM step loop, the two directions as two addmm_ per step vs one baddbmm_ per
# step over stacked weights (min and median ms over 10 runs). Run: python docs/results/s7-merged-directions-probe.py
import torch, time, statistics
torch.set_num_threads(1)
H = 256; T = 55
rows = [max(2, 64 - i) for i in range(T)]
W2 = torch.randn(2, H, 4*H) * 0.05
P2 = [torch.randn(2, r, 4*H) for r in rows]
def cell(g, c):
    i, f, gg, o = g.unsafe_split(H, -1)
    i.sigmoid_(); f.sigmoid_(); gg.tanh_(); o.sigmoid_()
    c2 = f.mul_(c).add_(i.mul_(gg))
    return o.mul_(torch.tanh(c2)), c2
def sep():
    hs = [torch.zeros(64, H), torch.zeros(64, H)]; cs = [torch.zeros(64, H), torch.zeros(64, H)]
    for t, r in enumerate(rows):
        for d in range(2):
            g = P2[t][d].clone().addmm_(hs[d][:r], W2[d])
            hs[d], cs[d] = cell(g, cs[d][:r])
def merged():
    h = torch.zeros(2, 64, H); c = torch.zeros(2, 64, H)
    for t, r in enumerate(rows):
        g = P2[t].clone().baddbmm_(h[:, :r], W2)
        h, c = cell(g, c[:, :r])
res = {"sep": [], "merged": []}
for _ in range(10):
    for k, f in (("sep", sep), ("merged", merged)):
        s = time.perf_counter(); f(); res[k].append(time.perf_counter() - s)
for k, v in res.items(): print(k, round(min(v)*1e3, 1), round(statistics.median(v)*1e3, 1))
