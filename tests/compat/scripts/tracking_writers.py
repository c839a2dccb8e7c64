# Every NVFlare tracking writer, many records per round.
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.client.tracking import MLflowWriter, SummaryWriter, WandBWriter

STEPS = 1200  # more than a round's old "first value per key" summary ever kept

flare.init()
tb, mlflow, wandb = SummaryWriter(), MLflowWriter(), WandBWriter()
mlflow.log_param("lr", 0.01)
mlflow.set_tags({"team": "a", "site": flare.get_site_name()})
while flare.is_running():
    model = flare.receive()
    r = model.current_round
    for i in range(STEPS):
        tb.add_scalar("train_loss", r + i / STEPS, global_step=r * STEPS + i)
    tb.add_scalars("pair", {"a": 1.0 * r, "b": 2.0 * r}, global_step=r)
    mlflow.log_metric("val_loss", 10.0 - r, step=r)
    mlflow.log_metrics({"m1": r, "m2": -r}, step=r)
    mlflow.log_text(f"round {r} notes", f"notes/round-{r}.txt")
    wandb.log({"acc": 0.5 + r / 10}, step=r)
    flare.send(FLModel(params={k: v + 1 for k, v in model.params.items()}))
