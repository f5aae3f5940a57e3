# difflab: the two commands of the README's Quick start, and a few more.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
CONFIG ?= configs/unified_sd1_unet_eps.yaml
QUICK_EPOCHS ?= 1

.PHONY: install install-test data quickstart test

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -r requirements.txt

install-test: install
	$(PYTHON) -m pip install -q -r requirements-test.txt

data:
	$(PYTHON) setup_mnist.py

# Installs, fetches MNIST, trains the SD1 config for $(QUICK_EPOCHS) epoch(s) (a few minutes on a
# laptop CPU) and samples a grid of every digit.
quickstart: install data
	$(PYTHON) train.py --config $(CONFIG) training.epochs=$(QUICK_EPOCHS)
	$(PYTHON) sample.py --checkpoint experiments/$(basename $(notdir $(CONFIG)))/checkpoints/model_epoch_$(QUICK_EPOCHS).pt \
		--out experiments/$(basename $(notdir $(CONFIG)))/quickstart_samples.png
	@echo "Samples: experiments/$(basename $(notdir $(CONFIG)))/quickstart_samples.png"

test: install-test data
	$(PYTHON) -m pytest -q tests
