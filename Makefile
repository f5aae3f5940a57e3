# difflab: the two commands of the README's Quick start, and a few more.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
# The quickstart's recipe, measured (benchmarks/quickstart_recipes.sh, docs/results/quickstart.json): of the configs
# trained on the same 38,400 images, SD1's objective on its U-Net drew FID 14.71 (91% right digits); the same U-Net
# with SD3's rectified flow, sampled in 20 Euler steps, 5.42 (96.9%), and samples 2.5x faster than 50 steps.
CONFIG ?= configs/reference/unet_flow.yaml
QUICK_IMAGES ?= 38400
QUICK_STEPS ?= 20
DATASET ?= mnist   # or fashion_mnist: `make quickstart DATASET=fashion_mnist` (Debian's dataset-fashion-mnist)

.PHONY: install install-test install-demo install-browser data classifier quickstart test compare compare-all fewstep fewstep-shipped fewstep-seeds curves encoders encoder-study unclip-study microcond-study cascade-study refiner-study video-study demo weights

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -r requirements.txt

install-test: install
	$(PYTHON) -m pip install -q -r requirements-test.txt

data:
	$(PYTHON) setup_mnist.py --dataset $(strip $(DATASET))

# Installs, fetches MNIST, trains $(CONFIG) on $(QUICK_IMAGES) images (1200 steps of 32; under an epoch:
# minutes on a laptop CPU) and samples a grid with a row per digit in $(QUICK_STEPS) steps.
# Run twice, it continues (here: finds done) the run it made the first time instead of refusing the folder.
QUICK_DIR = experiments$(if $(filter-out mnist,$(strip $(DATASET))),/$(strip $(DATASET)))
quickstart: install data
	$(PYTHON) train.py --config $(CONFIG) training.epochs=1 training.max_images=$(QUICK_IMAGES) \
		data.dataset=$(strip $(DATASET)) training.output_dir=$(QUICK_DIR) \
		$(if $(wildcard $(QUICK_DIR)/$(basename $(notdir $(CONFIG)))/checkpoints/last.pt),--resume)
	$(PYTHON) sample.py --checkpoint $(QUICK_DIR)/$(basename $(notdir $(CONFIG)))/checkpoints/model_epoch_1.pt \
		--steps $(QUICK_STEPS) --out $(QUICK_DIR)/$(basename $(notdir $(CONFIG)))/quickstart_samples.png
	@echo "Samples: $(QUICK_DIR)/$(basename $(notdir $(CONFIG)))/quickstart_samples.png"

install-demo: install
	$(PYTHON) -m pip install -q -r requirements-demo.txt

# The browser test drives Debian's Chromium through Playwright's Python API. Playwright never
# downloads a browser of its own: the test launches /usr/bin/chromium. Without root or apt the
# browser test is skipped with its reason shown.
install-browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium) || echo "could not install chromium: the browser test will be skipped"; \
	fi
	$(PYTHON) -m pip install -q playwright

# The MNIST classifier that evaluate.py judges with: trained once (a minute or two), then cached.
classifier: data
	$(PYTHON) -c "import sys; sys.path.insert(0, 'src'); from difflab.classifier import load_classifier; load_classifier(dataset='$(strip $(DATASET))')"

# ruff first (pyproject.toml: pyflakes, pycodestyle, lines of at most 120): seconds, and it names the line.
test: install-test install-demo install-browser data classifier
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -rs tests

# The page serves your runs in experiments/ when there are any, else the models shipped in weights/ (nothing to train).
demo: install-demo
	$(PYTHON) interactive_demo.py $(if $(wildcard experiments/*/checkpoints/*.pt),--experiments experiments)

# The shipped weights (weights/README.md), made again: the three milestones at the study's budget and seed 0, on one
# CPU thread (the thread count changes the order of the sums, so it is part of the recipe), exported as float16, and
# the tensors' SHA-256 (in each file's metadata) compared with the shipped file's. About an hour on our 2-core CPU.
WEIGHTS_DIR ?= experiments/weights
MILESTONES = unified_sd1_unet_eps:sd1_unet_eps unified_sd2_unet_v:sd2_unet_v unified_sd3_mmdit_flow:sd3_mmdit_flow
weights: install data
	@for pair in $(MILESTONES); do \
		c=$${pair%%:*}; w=$${pair##*:}; \
		resume=; [ -f $(WEIGHTS_DIR)/$$c/checkpoints/last.pt ] && resume=--resume; \
		$(PYTHON) train.py --config configs/$$c.yaml training.output_dir=$(WEIGHTS_DIR) training.seed=0 \
			training.epochs=1 training.max_images=60000 training.threads=1 $$resume || exit 1; \
		PYTHONPATH=src $(PYTHON) -m difflab export --fp16 --checkpoint $(WEIGHTS_DIR)/$$c/checkpoints/model_epoch_1.pt \
			--out $(WEIGHTS_DIR)/$$w.safetensors || exit 1; \
	done
	@for pair in $(MILESTONES); do w=$${pair##*:}; \
		PYTHONPATH=src $(PYTHON) -c "import json, sys; from safetensors import safe_open; \
			a, b = (json.loads(safe_open(p, 'np').metadata()['difflab'])['sha256'] for p in sys.argv[1:]); \
			print(sys.argv[2], 'has the weights of', sys.argv[1], 'bit for bit' if a == b else 'NOT: they differ'); \
			sys.exit(a != b)" weights/$$w.safetensors $(WEIGHTS_DIR)/$$w.safetensors || exit 1; \
	done

# The fair comparison (issue 7): every config trained on the same number of images, then
# evaluated with the same N and seed. `make compare` trains the three milestones in configs/
# (SEEDS=3 from a clean clone, install, MNIST and classifier included: 119 minutes on our 2-core CPU, 42 of them
# after training: the README's timing block, from docs/results/timing_compare_seeds3.json; an earlier run, whose
# results were not published, took 111);
# a run already in $(COMPARE_DIR) is continued (--resume) and scores already in results/scores.json are
# reused, so an interrupted `make compare` picks up where it stopped; `make compare-all` adds the
# reference configs (hours on a CPU: DDPM samples with 1000 steps). COMPARE_IMAGES=600000 for a 10x larger budget.
# SEEDS: training seeds per config; seed 0 trains in $(COMPARE_DIR), seed k in $(COMPARE_DIR)/seed<k>
# DATASET=fashion_mnist: the same study on Fashion-MNIST, in experiments/fashion_mnist/compare and results/fashion_mnist
SEEDS ?= 1
COMPARE_IMAGES ?= 60000
COMPARE_N ?= 1000
COMPARE_SWEEP_N ?= 100
COMPARE_SCALES ?= 1,1.5,2,3.5,7.5
COMPARE_DIR ?= $(QUICK_DIR)/compare
COMPARE_OUT ?= results$(if $(filter-out mnist,$(strip $(DATASET))),/$(strip $(DATASET)))
COMPARE_CONFIGS ?= $(wildcard configs/*.yaml)
REFERENCE_CONFIGS = configs/reference/ddpm_original.yaml configs/reference/unet_x0_prediction.yaml \
	configs/reference/unet_flow.yaml configs/reference/dit_transformer.yaml configs/reference/ldm_latent.yaml
compare: install data
	@epochs=$$(( ($(COMPARE_IMAGES) + 59999) / 60000 )); \
	for seed in $$(seq 0 $$(( $(SEEDS) - 1 ))); do \
		dir=$(COMPARE_DIR); [ $$seed -gt 0 ] && dir=$(COMPARE_DIR)/seed$$seed; \
		for c in $(COMPARE_CONFIGS); do \
			resume=; [ -f $$dir/$$(basename $$c .yaml)/checkpoints/last.pt ] && resume=--resume; \
			$(PYTHON) train.py --config $$c training.output_dir=$$dir training.seed=$$seed data.dataset=$(strip $(DATASET)) \
				training.epochs=$$epochs training.max_images=$(COMPARE_IMAGES) $$resume || exit 1; \
		done; \
	done
	$(PYTHON) compare_models.py --experiments $(COMPARE_DIR) --n $(COMPARE_N) --sweep-n $(COMPARE_SWEEP_N) --scales $(COMPARE_SCALES) --out $(COMPARE_OUT)

compare-all:
	$(MAKE) compare COMPARE_CONFIGS="$(wildcard configs/*.yaml) $(REFERENCE_CONFIGS)"

# Few-step models from the shipped teachers (issue 45), nothing to train first: ECT from sd2, progressive
# distillation of sd3 (8 -> 4 -> 2 -> 1) and of sd2 (16 -> 8 -> 4 -> 2 -> 1), MeanFlow from scratch; every teacher
# and student scored at 1, 2, 4 and 8 calls, published as docs/results/fewstep_shipped.json (docs/fewstep.md).
# About two and a half hours on 2 CPU cores; run again to resume.
fewstep-shipped: install data
	bash benchmarks/fewstep_shipped.sh

# The two distillation chains of fewstep-shipped over training seeds 0, 1 and 2 (seed 0: the table's own run),
# published as docs/results/fewstep_seeds.json. About an hour of training per new seed; run again to resume.
fewstep-seeds: install data
	bash benchmarks/fewstep_seeds.sh

# Learning curves (issue 46): the three milestones and the DiT, one 10-epoch run each, scored at epochs 1, 2, 5
# and 10 (N = 1000), model by model; published as docs/results/curves.json and docs/images/learning_curves.png after
# each point. About 1.5 hours a U-Net on 2 CPU cores: run it again to continue (models published are not retrained).
curves: install data
	$(PYTHON) benchmarks/curves.py

# The pretrained text encoders of issue 47 (docs/encoders.md): the tiny CLIP and the masked language model, trained
# once and cached in data/encoders/ (about 5 minutes on 2 CPU cores), measured into docs/results/text_encoders.json.
encoders: install data
	$(PYTHON) benchmarks/text_encoders.py

# Which text encoder reads prompts best (joint, frozen CLIP, frozen MLM; 3 seeds), and DALL-E 2 against SD1 at
# equal parameters (3 seeds, then a probe of the prior's guidance on seed 0): docs/results/encoder_study.json,
# unclip_study.json, unclip_decoder.json, unclip_prior_guidance.json. Resumable; about 2.5 hours each on 2 CPU
# cores (the second reuses the first's SD1 runs; about 45 minutes a seed and 20 for the probe).
encoder-study: encoders
	bash benchmarks/encoder_study.sh

unclip-study: encoders
	bash benchmarks/unclip_study.sh

# SDXL's micro-conditioning (issue 48, docs/microcond.md): SD1 on reframed digits, told nothing or told each
# digit's size and crop, 3 seeds: docs/results/microcond.json. About an hour on 2 CPU cores; resumable.
microcond-study: install data classifier
	bash benchmarks/microcond_study.sh

# Imagen's cascade (issue 48, docs/cascade.md): a 14x14 base and a 28x28 super-resolution stage, with and without
# noise conditioning augmentation, against SD1 at the same parameters and images, 3 seeds: docs/results/cascade.json.
# About 50 minutes on 2 quiet CPU cores; resumable.
cascade-study: install data classifier
	bash benchmarks/cascade_study.sh

# SDXL's refiner (issue 48, docs/microcond.md): a half-size SD1 and an expert of its low noise levels against SD1 at
# the same parameters and images, 3 seeds: docs/results/refiner.json. About 30 minutes; resumable.
refiner-study: install data classifier
	bash benchmarks/refiner_study.sh

# Sora on MNIST (issue 49, docs/video.md): the video DiT trained within 60 minutes (and at lr 0.001), scored as clips
video-study: install data classifier
	bash benchmarks/video_study.sh

# The few-step study (issue 27), after `make compare`: the SD2 U-Net it trained is the teacher of
# consistency distillation; consistency training and the shortcut MMDiT train from scratch. Each
# trains on COMPARE_IMAGES; then every model is scored at 1, 2, 4 and 8 steps (N = COMPARE_N) beside
# the two milestones, into results/fewstep/ (publish: compare_models.py --publish results/fewstep/results.json --as fewstep).
FEWSTEP_DIR = $(COMPARE_DIR)/fewstep
FEWSTEP_TEACHER = $(COMPARE_DIR)/unified_sd2_unet_v/checkpoints/last.pt
fewstep: install data
	@test -f $(FEWSTEP_TEACHER) || { echo "no teacher at $(FEWSTEP_TEACHER): run make compare first"; exit 1; }
	@epochs=$$(( ($(COMPARE_IMAGES) + 59999) / 60000 )); \
	for c in configs/fewstep/sd2_consistency_distill.yaml configs/fewstep/sd2_consistency_training.yaml \
			configs/fewstep/sd3_shortcut.yaml; do \
		teacher=; grep -q "method: consistency_distillation" $$c && teacher=fewstep.teacher=$(FEWSTEP_TEACHER); \
		resume=; [ -f $(FEWSTEP_DIR)/$$(basename $$c .yaml)/checkpoints/last.pt ] && resume=--resume; \
		$(PYTHON) train.py --config $$c training.output_dir=$(FEWSTEP_DIR) training.epochs=$$epochs \
			training.max_images=$(COMPARE_IMAGES) $$teacher $$resume || exit 1; \
	done
	$(PYTHON) compare_models.py --n $(COMPARE_N) --sweep-n $(COMPARE_N) --steps-list 1,2,4,8 --scales '' --out results/fewstep \
		--checkpoints $$(ls -v $(COMPARE_DIR)/unified_sd2_unet_v/checkpoints/model_epoch_*.pt | tail -1) \
		$$(ls -v $(COMPARE_DIR)/unified_sd3_mmdit_flow/checkpoints/model_epoch_*.pt | tail -1) \
		$$(for d in $(FEWSTEP_DIR)/*/checkpoints; do ls -v $$d/model_epoch_*.pt | tail -1; done)
