"""Test texts: Russian and English, the model card's sentences, very mixed lengths, over-long, empty."""

CARD_TEXTS = [
    "В Ярославской области разрешили работу бань, но без посетителей",
    "Ярославским баням разрешили работать без посетителей",
    "Женщину доставили в больницу, за ее жизнь сейчас борются врачи.",
    "Женщину спасают врачи.",
    "Сколько программистов нужно, чтобы вкрутить лампочку?",
    "Чтобы вкрутить лампочку, требуется три программиста: один напишет программу извлечения лампочки, "
    "другой — вкручивания лампочки, а третий проведет тестирование.",
]

_RU_PARAGRAPH = (
    "Москва — столица России, крупнейший по численности населения город страны. "
    "Город стоит на реке Москве в центре Восточно-Европейской равнины. "
)
_EN_PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the annual budget. "
    "Researchers measured the effect of temperature on reaction rates in three laboratories. "
)

SHORT = ["Привет!", "Hi", "Кот", "A dog.", "", "   "]
MIXED = [
    *CARD_TEXTS,
    *SHORT,
    "Mixed язык: JAX и PyTorch дают одинаковые эмбеддинги?",
    _EN_PARAGRAPH * 3,
    _RU_PARAGRAPH * 4,
]
# Far past 512 tokens: must be truncated (and reported), identically to sentence-transformers.
LONG = [_RU_PARAGRAPH * 40, _EN_PARAGRAPH * 30 + " конец"]
ALL = MIXED + LONG
