# NVFlare's Lightning client style: patch the trainer, validate the global model, fit, repeat.
import torch
from pytorch_lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

import nvflare.client.lightning as flare


class Regression(LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.lin(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


torch.manual_seed(0)
x = torch.randn(64, 3)
y = x @ torch.tensor([[1.0], [2.0], [3.0]])
data = DataLoader(TensorDataset(x, y), batch_size=16)
model = Regression()
trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu", devices=1)
flare.patch(trainer)
while flare.is_running():
    input_model = flare.receive()
    print(f"current_round={input_model.current_round}")
    flare.log("round_seen", input_model.current_round)
    trainer.validate(model, dataloaders=data)
    trainer.fit(model, train_dataloaders=data)
