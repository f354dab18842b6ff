"""The built-in "sentiment" task: a seeded corpus of short reviews, review-opening prompts, and a gold judge.

Nothing here downloads anything. The corpus mixes positive and negative reviews in roughly equal measure over
several domains, so a policy fine-tuned on it (SFT) writes completions whose mean gold sentiment is about 0; the
preference stages then push that mean up. The gold judge is VADER's compound score of the completion text
(Hutto & Gilbert 2014, `vaderSentiment`, which ships its lexicon), in [-1, 1]. It labels preferences and
evaluates policies; it is never a training reward.

A review is split into a prompt (the neutral opening, e.g. "I stayed at the Harbour Inn last week and") and a
completion (the sentiment-bearing rest). Prompts are split into train/eval by their item, so eval prompts name
items never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

# domain -> (opening templates, item names, aspects). Each aspect: (positive phrases, negative phrases).
_DOMAINS: dict[str, dict] = {
    "hotel": {
        "openings": ["I stayed at {item} {when} and", "We spent two nights at {item} {when} and",
                     "My family booked {item} {when} and"],
        "items": ["the Harbour Inn", "the Grand Plaza", "Hotel Aurora", "the Maple Lodge", "the Seaview Hotel",
                  "the Old Mill Inn", "Casa Blanca", "the Riverside Suites", "the Palm Court", "the Kings Arms",
                  "Hotel Meridian", "the Blue Door Inn", "the Alpine Chalet", "the Station Hotel"],
        "aspects": [
            (["the room was spotless", "the bed was very comfortable", "the view was beautiful"],
             ["the room was dirty", "the bed was awful", "the view was depressing"]),
            (["the staff were friendly and helpful", "the check-in was quick and easy",
              "the breakfast was delicious"],
             ["the staff were rude and unhelpful", "the check-in was slow and chaotic",
              "the breakfast was disgusting"]),
            (["it was quiet and peaceful", "the location was perfect", "everything felt clean and fresh"],
             ["it was noisy all night", "the location was terrible", "everything smelled bad"]),
        ],
    },
    "restaurant": {
        "openings": ["We ate at {item} {when} and", "I had dinner at {item} {when} and",
                     "My friends took me to {item} {when} and"],
        "items": ["Luigi's", "the Golden Dragon", "Cafe Rosa", "the Hungry Fox", "Bistro Nova", "the Spice House",
                  "the Blue Lagoon", "Mama Mia", "the Corner Grill", "Sakura Sushi", "the Olive Tree",
                  "Taco Loco", "the Green Table", "Le Petit Chef"],
        "aspects": [
            (["the pasta was delicious", "the soup was wonderful", "the steak was perfectly cooked"],
             ["the pasta was bland", "the soup was cold and salty", "the steak was burnt and tough"]),
            (["the waiter was friendly", "the service was fast", "the staff were lovely"],
             ["the waiter was rude", "the service was painfully slow", "the staff were careless"]),
            (["the prices were fair", "the dessert was amazing", "the place felt warm and cosy"],
             ["the prices were a ripoff", "the dessert was awful", "the place felt dirty and cramped"]),
        ],
    },
    "film": {
        "openings": ["I watched {item} {when} and", "We went to see {item} {when} and",
                     "I finally saw {item} {when} and"],
        "items": ["The Silent River", "Midnight Express", "Echoes of Mars", "The Last Garden", "Paper Crowns",
                  "Blue Horizon", "The Iron Orchard", "A Winter Tale", "Northern Lights", "The Glass Key",
                  "Shadow Play", "The Long Road", "City of Kites", "Broken Compass"],
        "aspects": [
            (["the story was gripping", "the plot was clever", "the ending was beautiful"],
             ["the story was boring", "the plot was stupid", "the ending was terrible"]),
            (["the acting was superb", "the lead actor was brilliant", "the cast was wonderful"],
             ["the acting was awful", "the lead actor was dreadful", "the cast was weak"]),
            (["the music was lovely", "the pacing was excellent", "every scene was a joy"],
             ["the music was annoying", "the pacing was painfully slow", "every scene was a chore"]),
        ],
    },
    "gadget": {
        "openings": ["I bought {item} {when} and", "My brother gave me {item} {when} and",
                     "I have been using {item} since {when} and"],
        "items": ["the Zenta X2 headphones", "the Volt phone", "the Nimbus tablet", "the Orbit smartwatch",
                  "the Pixo camera", "the Aria speaker", "the Flux laptop", "the Echo kettle",
                  "the Tera router", "the Luma lamp", "the Quark earbuds", "the Nova e-reader",
                  "the Bolt charger", "the Sonic drone"],
        "aspects": [
            (["the battery lasts for days", "the screen is bright and sharp", "the sound is excellent"],
             ["the battery dies in hours", "the screen is dim and blurry", "the sound is horrible"]),
            (["it is easy to set up", "it works perfectly", "the design is elegant"],
             ["it is a pain to set up", "it keeps crashing", "the design is ugly and cheap"]),
            (["it feels solid and well made", "it was worth every penny", "support was helpful"],
             ["it feels flimsy and broken", "it was a waste of money", "support was useless"]),
        ],
    },
    "book": {
        "openings": ["I read {item} {when} and", "My book club picked {item} {when} and",
                     "I borrowed {item} {when} and"],
        "items": ["The Quiet Harbour", "Letters from Nowhere", "The Salt Road", "A House of Birds",
                  "The Clockmaker", "Summer in Oslo", "The Red Notebook", "Under Grey Skies",
                  "The Lost Atlas", "Small Mercies", "The Tin Crown", "River of Stars",
                  "The Honest Thief", "Field of Ashes"],
        "aspects": [
            (["the writing was beautiful", "the characters were charming", "the dialogue was witty"],
             ["the writing was clumsy", "the characters were annoying", "the dialogue was dull"]),
            (["the story was moving", "the plot kept me hooked", "the ending was perfect"],
             ["the story was pointless", "the plot was a mess", "the ending was disappointing"]),
            (["I loved every chapter", "it made me smile", "it was a delight to read"],
             ["I hated every chapter", "it made me angry", "it was a struggle to finish"]),
        ],
    },
    "cafe": {
        "openings": ["I stopped at {item} {when} and", "We met at {item} {when} and",
                     "I tried {item} {when} and"],
        "items": ["Bean There", "the Daily Grind", "Cafe Luna", "the Copper Kettle", "Brew Brothers",
                  "the Little Bakery", "Morning Glory", "the Tea Garden", "Crumbs", "the Roastery",
                  "Cafe Verde", "the Honey Pot", "Perk Up", "the Velvet Cup"],
        "aspects": [
            (["the coffee was excellent", "the croissant was fresh and flaky", "the tea was perfect"],
             ["the coffee was bitter and burnt", "the croissant was stale", "the tea was weak and cold"]),
            (["the barista was cheerful", "the service was quick", "the owner was kind"],
             ["the barista was grumpy", "the service was slow", "the owner was rude"]),
            (["the music was relaxing", "it was a cosy spot", "the cakes were fantastic"],
             ["the music was too loud", "it was a miserable spot", "the cakes were awful"]),
        ],
    },
}

_WHEN = ["last week", "yesterday", "on Friday", "last month", "this weekend", "in the spring"]
_POS_VERDICTS = ["I would happily recommend it.", "Highly recommended!", "I will definitely come back.",
                 "A wonderful experience overall.", "Five stars from me.", "I loved it."]
_NEG_VERDICTS = ["I would not recommend it.", "Avoid it if you can.", "I will never go back.",
                 "A terrible experience overall.", "One star from me.", "I hated it."]
_CONNECT_SAME = ["Also,", "On top of that,", "And"]
_CONNECT_MIXED = ["Sadly,", "But", "Still,"]

EVAL_FRACTION = 0.2  # share of items per domain held out for eval prompts


@dataclass(frozen=True)
class Review:
    prompt: str       # the neutral opening
    completion: str   # the sentiment-bearing rest, starting with a space
    polarity: int     # +1 positive, -1 negative (the overall verdict)
    domain: str


def _split_items(seed: int) -> dict[str, tuple[list[str], list[str]]]:
    rng = random.Random(f"items-{seed}")
    out = {}
    for name, d in _DOMAINS.items():
        items = list(d["items"])
        rng.shuffle(items)
        n_eval = max(1, round(EVAL_FRACTION * len(items)))
        out[name] = (items[n_eval:], items[:n_eval])
    return out


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _review(rng: random.Random, domain: str, item: str) -> Review:
    d = _DOMAINS[domain]
    prompt = rng.choice(d["openings"]).format(item=item, when=rng.choice(_WHEN))
    polarity = 1 if rng.random() < 0.5 else -1
    aspects = rng.sample(d["aspects"], k=2)
    first = rng.choice(aspects[0][0] if polarity > 0 else aspects[0][1])
    # One review in four mentions a contrasting aspect, as real reviews do; the verdict keeps the polarity.
    mixed = rng.random() < 0.25
    second_pol = -polarity if mixed else polarity
    second = rng.choice(aspects[1][0] if second_pol > 0 else aspects[1][1])
    connect = rng.choice(_CONNECT_MIXED if mixed else _CONNECT_SAME)
    verdict = rng.choice(_POS_VERDICTS if polarity > 0 else _NEG_VERDICTS)
    completion = f" {first}. {connect} {second}. {verdict}"
    return Review(prompt=prompt, completion=completion, polarity=polarity, domain=domain)


def sentiment_corpus(n: int, seed: int = 0, split: str = "train", *, stream: str = "corpus") -> list[Review]:
    """`n` seeded reviews whose items come from the `split` ("train" or "eval") share of each domain.

    The train/eval item split depends on `seed` only; `stream` names an independent sequence of reviews
    drawn over the same split (the prompt sets use their own stream).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    items = _split_items(seed)
    rng = random.Random(f"{stream}-{seed}-{split}")
    domains = sorted(_DOMAINS)
    out = []
    for i in range(n):
        domain = domains[i % len(domains)]
        pool = items[domain][0 if split == "train" else 1]
        out.append(_review(rng, domain, rng.choice(pool)))
    return out


def sentiment_prompts(n: int, seed: int = 0, split: str = "eval") -> list[str]:
    """`n` distinct-as-possible review openings from the `split` items (the prompt set for sampling/eval)."""
    return [r.prompt for r in sentiment_corpus(n, seed=seed, split=split, stream="prompts")]


def as_chat(opening: str) -> list[dict]:
    """A review opening as a conversational prompt, for instruction-tuned models (builtin:sentiment-chat)."""
    return [{"role": "user", "content": f"Continue this short review in one or two sentences: {opening}"}]


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text used to train the tiny model's byte-level BPE: every phrase and item of the task, both splits."""
    lines = []
    for d in _DOMAINS.values():
        lines += list(d["items"]) + [o.format(item="it", when=w) for o in d["openings"] for w in _WHEN]
        for pos, neg in d["aspects"]:
            lines += [_cap(p) + "." for p in pos + neg]
    lines += _POS_VERDICTS + _NEG_VERDICTS + _CONNECT_SAME + _CONNECT_MIXED
    lines += [r.prompt + r.completion for r in sentiment_corpus(2000, seed=seed, split="train")]
    return lines


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # a project dependency; say how to get it rather than a bare ImportError
        from reins.errors import ReinsError

        raise ReinsError("the sentiment gold judge needs vaderSentiment: pip install vaderSentiment") from e
    return SentimentIntensityAnalyzer()


def gold_reward(texts: list[str]) -> list[float]:
    """Gold judge: VADER compound sentiment of each text, in [-1, 1] (0 for empty text)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) if t.strip() else 0.0 for t in texts]
