#!/usr/bin/env python3
"""Writes tiny-stories.jsonl / tiny-stories-eval.jsonl: short TinyStories-style stories, composed from hand-written
sentence templates (original text, no external source), that all bring in one new character the base model has never
seen: Zuzu, a little robot who says "Beep boop!". After LoRA training the model tells stories about Zuzu; the base
model does not. Deterministic: re-running gives the same files."""
import json, random

NAMES = ["Mia", "Tom", "Ben", "Lucy", "Sam", "Zoe", "Max", "Lily", "Leo", "Anna", "Finn", "Rosa", "Jack", "Ella", "Noah", "Ivy"]
THINGS = ["a blue kite", "a shiny stone", "a yellow boat", "a big box", "a soft blanket", "a green ball", "a paper hat", "a wooden train"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the farm", "the river", "the hill", "the old barn"]
WEATHER = ["The sun was warm.", "The wind was cold.", "It was a rainy day.", "The sky was bright and clear.", "Snow covered the ground."]
LIGHTS = ["blue lights", "green lights", "a round head", "big wheels", "a shiny red nose"]
OPENINGS = [
    "Once upon a time, there was a little {kind} named {n}.",
    "One day, {n} went to {place}.",
    "{n} had {t} that {n} loved very much.",
]
MEET = [
    "Soon {n} met Zuzu, a little robot with {lights}.",
    "At {place}, {n} saw Zuzu, a little robot with {lights}.",
    "Then a little robot rolled up. It was Zuzu, the robot with {lights}.",
]
PROBLEMS = [
    "But then it fell into the water.",
    "But it got stuck high up in a tall tree.",
    "But {n} could not find the way home.",
    "But it broke in two pieces.",
]
FIXES = [
    "Zuzu stretched a long metal arm and got it back.",
    "Zuzu beeped a happy song and showed {n} the way.",
    "Zuzu used a tiny tool and fixed it.",
    "Zuzu and {n} worked together and fixed the problem.",
]
ENDINGS = [
    "{n} hugged Zuzu and said thank you.",
    "From that day on, {n} and Zuzu were best friends.",
    "{n} learned that a good friend can be a robot too.",
]

def story(rng):
    n = rng.choice(NAMES)
    slots = dict(n=n, t=rng.choice(THINGS), place=rng.choice(PLACES), lights=rng.choice(LIGHTS), kind=rng.choice(["girl", "boy"]))
    parts = [
        rng.choice(OPENINGS),
        rng.choice(WEATHER),
        "{n} played with {t}.",
        rng.choice(MEET),
        '"Beep boop!" said Zuzu. "I am Zuzu. Can I help you?"',
        rng.choice(PROBLEMS),
        "{n} was sad.",
        rng.choice(FIXES),
        '"Beep boop!" said Zuzu.',
        rng.choice(ENDINGS),
        "The end.",
    ]
    text = " ".join(parts).format(**slots)
    return text[0].upper() + text[1:]

def write(path, count, seed, seen):
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < count:
            text = story(rng)
            if text in seen:  # the eval file holds only stories the training file does not
                continue
            seen.add(text)
            out.write(json.dumps({"text": text}) + "\n")
            written += 1

seen = set()
write("tiny-stories.jsonl", 320, 20261125, seen)
write("tiny-stories-eval.jsonl", 40, 7, seen)
