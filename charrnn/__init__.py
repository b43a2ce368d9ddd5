"""charrnn: the library behind rnn_train.py and rnn_play.py, one module per concern.

Imports flow one way, from the scripts at the root down into this package, and
inside it from the loop down to the text (DEVELOPERS.md has the table):

    training    the loop: a for over the batches, the step, then the pieces (log, validate, sample, checkpoint)
    plateau     KeepBest, the piece that restarts from or ends at the best checkpoint
    budget      --max-time: calibration, the plan, its clock; TimeLimit, the loop's piece
    trainer     Trainer: model, Adam, carried state and step, in one checkpoint
    steps       the compiled steps: one training step for one device and tf.distribute, validation
    logs        TensorBoard: writers, tags, layout
    distribute  tf.distribute: the strategy, TF_CONFIG, the chief
    export      the SavedModel
    web         --export-web: the static page (its files in webpage/)
    sampling    logits -> characters; the compiled generation loop
    runs        the run a training opens: new, resumed or forked; its folders and saved files
    corpus_check the manifest of a run's text; a resumed run reads the same
    catalog     finding runs: --list, a RUN spec, the newest run, loading one to generate from
    lock        RunLock: one process trains into a run
    run_files   a run folder's layout, file names and JSON files
    model       CharRNN, one Keras model for training and generation
    fused       the fused CPU kernels
    precision   --precision: the matmuls' dtype, fp16's loss scale
    schedule    the learning rate at each step
    recipe      --preset quality: the model and its training for this text, budget and machine
    checkpoints checkpoint bundles, durable writes
    console     what a run prints
    cli         the commands the tools print, as the user's environment runs them; the scripts' parser
    text        numpy only: vocabulary, corpus files, validation split, sequencer
    shakespeare the default corpus, fetched and checked
    config      the settings as dataclasses, checked; no TensorFlow
    tf_setup    what --implementation auto runs, threads and a quiet TensorFlow import
    errors      UserError
"""
