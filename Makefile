# Each target sets everything up (a local .venv) and runs. A first run: `make quick`
# (minutes); `make train` is the full default run (hours on a CPU).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup data quick quality train play test bench tensorboard clean

# The scripts then print their next steps as make commands (charrnn/cli.py).
data quick quality train play: export CHARRNN_MAKE := 1

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

data: $(STAMP)           ## fetch the Shakespeare corpus into shakespeare/
	$(PY) txt_utils.py fetch

quick: $(STAMP)          ## a small model that writes words in minutes: rnn_train.py --preset quick
	$(PY) rnn_train.py --preset quick $(ARGS)

quality: $(STAMP)        ## the best model in 10 minutes: make quality ARGS="--data input.txt"
	$(PY) rnn_train.py --preset quality $(ARGS)

train: $(STAMP)          ## make train ARGS="--layers 2 --units 256"
	$(PY) rnn_train.py $(ARGS)

play: $(STAMP)           ## make play ARGS="--prime ROMEO: -n 500"
	$(PY) rnn_play.py $(ARGS)

test: $(STAMP)
	$(PY) -m unittest tests.py

bench: $(STAMP)
	$(PY) benchmark.py $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir=log

clean:                   ## removes the environment, not checkpoints or logs
	rm -rf $(VENV) __pycache__
