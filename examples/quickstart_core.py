"""Quick start for the hyperlight core: a hypernetwork predicts a small CNN's convolution weights from a
hyperparameter h in [0, 1], starting exactly from the pretrained CNN.

    python examples/quickstart_core.py
"""

import copy

import torch
from torch import nn

from hyperlight import HyperNet, find_modules_of_type, hypernetize, unhypernetize

torch.manual_seed(0)

# 1. A small "pretrained" CNN (any nn.Module works: hypernetize reuses its own forward).
cnn = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(8, 8, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(8, 4),
)
pretrained = copy.deepcopy(cnn).requires_grad_(False)

# 2. Turn every convolution's parameters into externals, keeping the pretrained values.
convs = find_modules_of_type(cnn, [nn.Conv2d])
model, weights = hypernetize(cnn, modules=convs, return_values=True)
print("hypernetized:", list(convs), "->", model.external_shapes())

# 3. A hypernetwork whose θ0 holds those values; Δθ starts at exactly zero.
hypernet = HyperNet.from_existing(weights, input_shapes={"h": ()}, hidden_sizes=[16, 32])
print(f"hypernet parameters: {sum(p.numel() for p in hypernet.parameters())}")

# 4. One forward with a different h per example: example b runs with its own predicted weights.
x, h = torch.randn(16, 1, 12, 12), torch.rand(16)
with model.using_externals(hypernet(h=h)):
    y = model(x)
gap = (y - pretrained(x)).abs().max().item()
print(f"at init, max |hypernetized - pretrained| = {gap:.1e}")
assert gap < 1e-5
with model.using_externals(hypernet(h=torch.tensor(0.3))):  # one h for the whole batch: the very same ops
    assert torch.equal(model(x), pretrained(x))


# 5. Train on a toy objective that depends on h: the output should be the pretrained one scaled by (1 + h).
def loss_fn(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    with model.using_externals(hypernet(h=h)):
        y = model(x)
    return ((y - (1 + h[:, None]) * pretrained(x)) ** 2).mean()


optimizer = torch.optim.Adam(hypernet.parameters(), lr=3e-3)
x_val, h_val = torch.randn(64, 1, 12, 12), torch.rand(64)
with torch.no_grad():
    start = loss_fn(x_val, h_val).item()
for step in range(1, 61):
    loss = loss_fn(torch.randn(32, 1, 12, 12), torch.rand(32))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step:3d}  train loss {loss.item():.4f}")
with torch.no_grad():
    end = loss_fn(x_val, h_val).item()
print(f"validation loss {start:.4f} -> {end:.4f}")
assert end < start

# 6. Bake the weights for one h into a plain CNN (no hyperlight classes left).
with torch.no_grad():
    values = hypernet(h=torch.tensor(0.5))
plain = unhypernetize(model, values, inplace=False)
with torch.no_grad(), model.using_externals(values):
    assert torch.equal(plain(x), model(x))
print("exported a plain", type(plain).__name__, "for h=0.5")
