"""train/report/card.py: the model card a published generator carries, parsed back with
huggingface_hub's ModelCard as the hub parses it."""
import pytest
from huggingface_hub import ModelCard

from train.dcgan import DCGANConfig
from train.report.card import CardFacts, Scores, last_scores, model_card
from train.run.published import published_settings
from train.wgangp import WGANGPConfig

RECORDS = [
    {"step": 10, "fid": 80.0, "kid_mean": 0.1, "kid_std": 0.01, "fid_samples": 1000},
    {"step": 20, "d_loss": -1.5},
    {"step": 30, "fid": 50.5, "kid_mean": 0.05, "kid_std": 0.004, "fid_samples": 10000},
    {"step": 40, "d_loss": -2.0},
    {"step": 50, "fid": 40.0, "kid_mean": 0.02, "kid_std": 0.003, "fid_samples": 10000},
]


def card_of(config, scores: Scores | None, step: int = 40) -> ModelCard:
    facts = CardFacts("alice/faces", config, published_settings(config), step, scores, "samples.png", 64, "other")
    return ModelCard(str(model_card(facts)))  # parsed back from its text, as the hub reads README.md


def test_the_scores_are_the_last_evaluation_of_the_published_weights_or_before():
    assert last_scores(RECORDS, 40) == Scores(30, {"fid": 50.5, "kid_mean": 0.05, "kid_std": 0.004}, 10000)
    assert last_scores(RECORDS, 50).step == 50 and last_scores(RECORDS, None).step == 50
    assert last_scores(RECORDS, 9) is None and last_scores([{"step": 5, "d_loss": 1.0}], 40) is None
    stacked = [{"step": 8, "sm_modes": 987.0, "sm_kl": 0.12, "sm_frechet": 3.5, "sm_samples": 26000}]
    assert last_scores(stacked, 8) == Scores(8, {"sm_modes": 987.0, "sm_kl": 0.12, "sm_frechet": 3.5}, 26000)


def test_a_hub_dataset_runs_card_names_the_dataset_its_licence_and_its_fid_and_kid():
    card = card_of(WGANGPConfig(data="hf:mattymchen/celeba-hq"), last_scores(RECORDS, 40))
    assert card.data.datasets == ["mattymchen/celeba-hq"]
    assert card.data.license_link == "https://huggingface.co/datasets/mattymchen/celeba-hq"
    results = {(r.metric_type, r.metric_value, r.dataset_name, r.dataset_split) for r in card.data.eval_results}
    assert results == {("fid", 50.5, "mattymchen/celeba-hq", "train"), ("kid", 0.05, "mattymchen/celeba-hq", "train")}
    assert "at step 30 on 10,000 samples" in card.text and "| KID | 0.05 ± 0.004 |" in card.text
    assert "non-commercial research only" in card.text and "| `data` | `hf:mattymchen/celeba-hq` |" in card.text


def test_a_stacked_mnist_runs_card_reports_modes_kl_and_frechet_and_no_hub_dataset():
    scores = Scores(8000, {"sm_modes": 987.0, "sm_kl": 0.12, "sm_frechet": 3.5}, 26000)
    card = card_of(DCGANConfig(data="stacked-mnist", resolution=32), scores, step=8000)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"modes": 987.0, "kl": 0.12, "frechet": 3.5}
    assert card.data.datasets is None and card.data.tags[:2] == ["facegan", "gan"] and "dcgan" in card.data.tags
    assert "| Stacked MNIST modes covered (of 1,000) | 987 |" in card.text


@pytest.mark.parametrize("license", ["mit", "cc-by-nc-4.0"])
def test_a_licence_given_is_the_cards_own_without_the_training_data_terms(license):
    config = WGANGPConfig()
    facts = CardFacts("alice/faces", config, published_settings(config), 40, None, "samples.png", 64, license)
    card = ModelCard(str(model_card(facts)))
    assert card.data.license == license and card.data.license_name is None and card.data.eval_results is None


def test_a_toy_runs_card_claims_no_image_task():
    card = card_of(WGANGPConfig(data="toy:8gaussians", model="mlp", latent_dim=2), None)
    assert card.data.pipeline_tag is None and "unconditional-image-generation" not in card.data.tags
    assert "to 2-D points" in card.text and card.data.eval_results is None
