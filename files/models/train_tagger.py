"""Train the text demo model: a named-entity tagger whose tokenizer is inside the model.

No text corpus can be downloaded here, so the sentences are generated from templates: people,
places, organisations and numbers in everyday sentences, tagged PER, LOC, ORG, NUM or O. Half the
held-out sentences hold names the model never saw, the other half sentence shapes it never saw,
so its held-out token accuracy measures context, not memory; in training, one word in six is swapped for a
word outside the vocabulary, so that the model learns to tag unknown words by their context. The
model takes raw strings: a
``TextVectorization`` layer (lowercase, split on whitespace, 24 tokens, the training vocabulary)
is its first layer, then an embedding, two 1-D convolutions and a softmax over the tags per
token.

    python files/models/train_tagger.py --version 1
"""

from __future__ import annotations

import json
import random

import numpy as np
from training import release_args, save_keras_release, seeded_keras

from inference.release import TextSpec

TAGS = ["O", "PER", "LOC", "ORG", "NUM"]
SEQUENCE_LENGTH = 24
SPEC = TextSpec(lowercase=True, sequence_length=SEQUENCE_LENGTH, max_chars=2000)
TRAIN_SIZE, HELDOUT_SIZE = 4000, 400

PEOPLE = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "yusuf",
    "zoe",
    "amara",
    "bruno",
    "chen",
    "dmitri",
    "elena",
    "farah",
    "goran",
    "hana",
    "ines",
    "jonas",
    "kwame",
    "lena",
    "mateo",
    "nadia",
    "omar",
    "priya",
    "quinn",
    "rosa",
    "sven",
    "tariq",
    "uma",
]
PLACES = [
    "paris",
    "london",
    "berlin",
    "madrid",
    "rome",
    "lisbon",
    "vienna",
    "prague",
    "warsaw",
    "dublin",
    "oslo",
    "helsinki",
    "athens",
    "cairo",
    "lagos",
    "nairobi",
    "tokyo",
    "osaka",
    "seoul",
    "delhi",
    "mumbai",
    "lima",
    "bogota",
    "quito",
    "denver",
    "boston",
    "chicago",
    "toronto",
    "sydney",
    "perth",
    "auckland",
    "hanoi",
    "manila",
    "jakarta",
    "dakar",
    "accra",
    "tunis",
    "riga",
    "tallinn",
    "porto",
]
ORGS = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "vandelay",
    "wayne",
    "stark",
    "cyberdyne",
    "tyrell",
    "soylent",
    "wonka",
    "oscorp",
    "aperture",
    "massive",
    "monarch",
    "pied",
    "dunder",
    "virtucon",
    "gringotts",
]
TEMPLATES = [
    "{PER} flew to {LOC} on may {NUM}",
    "{PER} works for {ORG} in {LOC}",
    "the {ORG} office in {LOC} has {NUM} staff",
    "{PER} and {PER} met in {LOC} last week",
    "{ORG} hired {NUM} engineers in {LOC}",
    "yesterday {PER} called {PER} from {LOC}",
    "{PER} sold {NUM} shares of {ORG}",
    "we drove from {LOC} to {LOC} with {PER}",
    "{ORG} opened a store in {LOC}",
    "{PER} paid {NUM} dollars for the ticket",
    "the train to {LOC} leaves at {NUM}",
    "{PER} joined {ORG} after {NUM} years in {LOC}",
    "a letter from {PER} arrived in {LOC}",
    "{ORG} and {ORG} signed a deal in {LOC}",
]
# Never seen in training: the held-out set's measure of context.
HELDOUT_TEMPLATES = [
    "{PER} moved to {LOC} with {NUM} boxes",
    "the {ORG} team in {LOC} thanked {PER}",
    "{PER} wrote to {ORG} about {NUM} orders",
    "after {NUM} days in {LOC} {PER} went home",
]


def sentence(rng: random.Random, template: str, names: dict[str, list[str]]) -> tuple[str, list[str]]:
    words, tags = [], []
    for part in template.split():
        if part.startswith("{"):
            kind = part.strip("{}")
            word = str(rng.randint(1, 999)) if kind == "NUM" else rng.choice(names[kind])
            words.append(word.capitalize() if kind in ("PER", "LOC", "ORG") else word)
            tags.append(kind)
        else:
            words.append(part)
            tags.append("O")
    return " ".join(words), tags


def dataset(seed: int, count: int, heldout: int) -> tuple[list, list]:
    """Training and held-out sentences with their tags; a fifth of the names are held out."""
    rng = random.Random(seed)
    pools = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}
    train_names, test_names = {}, {}
    for kind, pool in pools.items():
        shuffled = pool[:]
        rng.shuffle(shuffled)
        cut = len(shuffled) // 5
        test_names[kind], train_names[kind] = shuffled[:cut], shuffled[cut:]
    train = [sentence(rng, rng.choice(TEMPLATES), train_names) for _ in range(count)]
    # Half: known sentence shapes with unseen names; half: unseen sentence shapes, known names.
    test = [sentence(rng, rng.choice(TEMPLATES), test_names) for _ in range(heldout // 2)]
    test += [sentence(rng, rng.choice(HELDOUT_TEMPLATES), train_names) for _ in range(heldout - heldout // 2)]
    return train, test


def drop_words(rows: list, seed: int, rate: float = 1 / 6) -> list:
    """Swap words for ones outside the vocabulary (a different made-up word each time)."""
    rng = random.Random(seed + 1)
    out = []
    for text, tags in rows:
        # Names are the words most often unknown in real text: they are swapped twice as often.
        words = [
            f"zz{rng.randint(0, 10**6)}" if rng.random() < (rate * 2 if tag != "O" else rate) else w
            for w, tag in zip(text.split(), tags, strict=True)
        ]
        out.append((" ".join(words), tags))
    return out


def encode_tags(rows: list) -> np.ndarray:
    out = np.zeros((len(rows), SEQUENCE_LENGTH), np.int64)
    for i, (_, tags) in enumerate(rows):
        ids = [TAGS.index(t) for t in tags][:SEQUENCE_LENGTH]
        out[i, : len(ids)] = ids
    return out


def scores(predicted: np.ndarray, rows: list) -> tuple[float, float]:
    """Token accuracy and entity-token accuracy of per-token scores ``[N, SEQUENCE_LENGTH, tags]``
    against the rows' tags."""
    right = total = entities = entities_right = 0
    for row, (_, tags) in zip(predicted.argmax(axis=-1), rows, strict=True):
        for i, tag in enumerate(tags[:SEQUENCE_LENGTH]):
            total += 1
            right += int(TAGS[row[i]] == tag)
            if tag != "O":
                entities += 1
                entities_right += int(TAGS[row[i]] == tag)
    return right / total, entities_right / entities


def main() -> int:
    args = release_args(__doc__, "tagger", epochs=20)

    keras, _tf = seeded_keras(args.seed)

    train, test = dataset(args.seed, count=TRAIN_SIZE, heldout=HELDOUT_SIZE)
    vocabulary = sorted({w for text, _ in train for w in SPEC.tokens(text)})  # before drop_words
    model = keras.Sequential(
        [
            keras.Input(shape=(), dtype="string", name="text"),
            keras.layers.TextVectorization(
                standardize="lower",
                split="whitespace",
                output_mode="int",
                output_sequence_length=SEQUENCE_LENGTH,
                vocabulary=vocabulary,
                name="tokens",
            ),
            keras.layers.Embedding(len(vocabulary) + 2, 32, name="embedding"),
            keras.layers.Conv1D(64, 5, padding="same", activation="relu"),
            keras.layers.Conv1D(64, 5, padding="same", activation="relu"),
            keras.layers.Dense(len(TAGS), activation="softmax", name="tags"),
        ],
        name="tagger",
    )
    train = drop_words(train, args.seed)
    x_train = np.array([text for text, _ in train], dtype=object)
    # Padding positions count as O; they are never reported (a token per word).
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, encode_tags(train), epochs=args.epochs, batch_size=32, verbose=0)

    x_test = np.array([text for text, _ in test], dtype=object)
    accuracy, entity_accuracy = (round(a, 4) for a in scores(model.predict(x_test, verbose=0), test))

    release_dir, release = save_keras_release(
        model,
        args,
        name="tagger",
        labels=TAGS,
        spec=SPEC,
        top_k=1,
        extra={
            "task": "tagging",
            "description": "Keras named-entity tagger (PER, LOC, ORG, NUM) on generated sentences, tokenizer inside",
            "heldout_token_accuracy": accuracy,
            "heldout_entity_accuracy": entity_accuracy,
            "heldout_size": len(test),
        },
    )
    summary = {"release": str(release_dir), "token_accuracy": accuracy, "entity_accuracy": entity_accuracy}
    print(json.dumps({**summary, "sha256": release.sha256}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
