"""A deterministic mixed Russian/English embedding workload, and a BERTA-shaped checkpoint to run it on.

Mix (by text count): about 40% short queries of 3-12 words, 45% sentences of
12-60 words, 15% documents of 100-600 words (some past the 512-token context).
"""

from __future__ import annotations

import random
from pathlib import Path

_RU = (
    "город река область врачи больница жизнь программа лампочка тестирование работа баня посетители "
    "правительство решение закон школа учитель ученик книга история наука исследование данные модель "
    "система сеть компания рынок цена рост экономика погода зима лето дорога машина поезд станция "
    "разрешили доставили спасают напишет проведет требуется сообщили заявил отметил считает будет "
    "новый большой важный первый последний русский российский московский сегодня вчера очень также"
).split()
_EN = (
    "city river region doctors hospital life program light bulb testing work people government decision "
    "law school teacher student book history science research data model system network company market "
    "price growth economy weather winter summer road car train station announced reported said believes "
    "new large important first last today yesterday very also quickly carefully the a of and in to with"
).split()


def _sentence(rng: random.Random, n_words: int) -> str:
    words = rng.choice((_RU, _EN))
    text = " ".join(rng.choice(words) for _ in range(n_words))
    return text[0].upper() + text[1:] + rng.choice((".", "?", "!", "."))


def mixed_texts(n: int = 256, seed: int = 0) -> list[str]:
    """`n` texts: 40% queries (3-12 words), 45% sentences (12-60), 15% documents (100-600), shuffled."""
    rng = random.Random(seed)
    n_query, n_doc = round(0.40 * n), round(0.15 * n)
    n_sent = n - n_query - n_doc
    texts = [_sentence(rng, rng.randint(3, 12)) for _ in range(n_query)]
    texts += [_sentence(rng, rng.randint(12, 60)) for _ in range(n_sent)]
    texts += [_sentence(rng, rng.randint(100, 600)) for _ in range(n_doc)]
    rng.shuffle(texts)
    return texts


def berta_shaped_checkpoint(folder: Path) -> Path:
    """Build (once) a random-weight BERTA-shaped sentence-transformers folder with BERTA's prompts."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.checkpoints import BERTA_PROMPTS, BERTA_SHAPE, make_random_bert

    if not (folder / "model.safetensors").exists():
        make_random_bert(folder, seed=0, prompts=BERTA_PROMPTS, default_prompt_name="categorize_entailment", **BERTA_SHAPE)
    return folder
