"""charrnn: the library behind rnn_train.py and rnn_play.py, one module per concern.

Imports flow one way, from the scripts at the root down into this package, and
inside it from the loop down to the text:

    training   the loop and the pieces it calls on a schedule (log, validate, sample, checkpoint, budget)
    distribute tf.distribute: the strategy, TF_CONFIG, the chief
    export     the SavedModel
    sampling   logits -> characters; the compiled generation loop
    runs       a run folder: its files, new/resumed/forked runs, the lock, finding runs
    model      CharRNN, one Keras model for training and generation
    fused      the fused CPU kernels
    precision  --precision: the matmuls' dtype, fp16's loss scale
    schedule   the learning rate at each step; --max-time as a plan
    recipe     --preset quality: the model, dropout and validation for this text, budget and machine
    checkpoints checkpoint bundles, durable writes
    console    what a run prints
    cli        the commands the tools print, as the user's environment runs them; the scripts' parser
    text       numpy only: vocabulary, corpus files, validation split, sequencer
    shakespeare the default corpus, fetched and checked
    config     the settings as dataclasses, checked; no TensorFlow
    tf_setup   threads and a quiet TensorFlow import
    errors     UserError
"""
