"""TensorBoard summaries of a run: training and validation curves side by side, the
config, samples, and the Custom Scalars tab's layout."""

import math

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalars

# TensorBoard shows a card per tag, grouped by the part before the '/', groups in
# alphabetical order: the numbers put the loss first and the speed after the learning curves.
LOSS, BITS, ACCURACY = "1_loss/loss", "1_loss/loss_in_bits_per_char", "2_accuracy/accuracy"
CHARS_PER_S, GFLOPS, LEARNING_RATE = "3_speed/chars_per_s", "3_speed/flop_rate_gflops", "4_optimizer/learning_rate"
CHARTS = {  # the Custom Scalars tab, in this order: {category: [(chart title, tag)]}
    "learning": [("loss in nats, training and validation", LOSS), ("bits per character", BITS),
                 ("accuracy: next character right", ACCURACY)],
    "speed": [("characters per second", CHARS_PER_S), ("GFLOP/s of the training step", GFLOPS)],
    "optimizer": [("learning rate", LEARNING_RATE)],
}


class Logs:
    """TensorBoard summaries: train/ and validation/ side by side, so their curves overlay."""

    def __init__(self, run, corpus, step):
        train_dir, valid_dir = run.log_dirs()
        self.train_writer = tf.summary.create_file_writer(str(train_dir))
        self.valid_writer = tf.summary.create_file_writer(str(valid_dir))
        with self.train_writer.as_default(step=step):
            tf.summary.text("config", config_markdown(run, corpus))
            write_layout()

    def train(self, step, window, learning_rate, flops_per_char):
        with self.train_writer.as_default(step=step):
            write_metrics(window.loss, window.accuracy)
            tf.summary.scalar(LEARNING_RATE, learning_rate)
            tf.summary.scalar(CHARS_PER_S, window.chars_per_s)
            tf.summary.scalar(GFLOPS, window.chars_per_s * flops_per_char / 1e9)

    def validation(self, step, loss, accuracy):
        with self.valid_writer.as_default(step=step):
            write_metrics(loss, accuracy)

    def sample(self, step, text):
        with self.train_writer.as_default(step=step):
            tf.summary.text("sample", "```\n" + text + "\n```")

    def flush(self):
        self.train_writer.flush()
        self.valid_writer.flush()


def write_metrics(loss, accuracy):
    tf.summary.scalar(LOSS, loss)
    tf.summary.scalar(BITS, loss / math.log(2))
    tf.summary.scalar(ACCURACY, accuracy)


def write_layout():
    """The Custom Scalars tab's charts (TensorBoard merges the same layout from every run)."""
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=[f"^{tag}$"]))
            for chart, tag in charts])
        for title, charts in CHARTS.items()])
    tf.summary.write(custom_scalars.CONFIG_SUMMARY_TAG, tf.constant(layout.SerializeToString()),
                     metadata=custom_scalars.create_summary_metadata())


def config_markdown(run, corpus):
    cfg = run.config
    rows = [f"| {k} | {v} |" for k, v in vars(cfg).items()]
    rows.append(f"| vocabulary | {len(corpus.vocab)} symbols |")
    rows.append(f"| corpus | {len(corpus.files)} files, {len(corpus.codes):,} chars |")
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)
