#!/usr/bin/env python3
"""Writes tiny-stories.jsonl / tiny-stories-eval.jsonl: short TinyStories-style lines composed from hand-written
sentence templates (original text, no external source). Deterministic: re-running gives the same files."""
import json, random

NAMES = ["Mia", "Tom", "Ben", "Lucy", "Sam", "Zoe", "Max", "Lily", "Leo", "Anna", "Finn", "Rosa", "Jack", "Ella", "Noah", "Ivy"]
PETS = ["a small dog", "a fluffy cat", "a tiny frog", "a brown bunny", "a red bird", "a slow turtle", "a happy duck", "a little fox"]
THINGS = ["a blue kite", "a shiny stone", "a yellow boat", "a big box", "a soft blanket", "a green ball", "a paper hat", "a wooden train"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the farm", "the river", "the hill", "the old barn"]
WEATHER = ["The sun was warm.", "The wind was cold.", "It was a rainy day.", "The sky was bright and clear.", "Snow covered the ground."]
FEEL = ["happy", "sad", "scared", "brave", "excited", "sleepy", "curious", "proud"]
LESSON = [
    "From that day on, {n} always shared with friends.",
    "{n} learned that being kind makes everyone smile.",
    "{n} knew that asking for help is a good thing.",
    "{n} promised to be careful next time.",
    "Now {n} and {p} are best friends forever.",
    "{n} smiled and went home for a warm dinner.",
]
PROBLEMS = [
    "But then {t} fell into the water.",
    "But {p} could not find the way home.",
    "Suddenly, a loud noise made {p} run away.",
    "Then the wind took {t} up into a tall tree.",
    "But {t} was stuck under a heavy log.",
]
FIXES = [
    "{n} asked Mom for help, and together they got it back.",
    "{n} used a long stick and pulled it out.",
    "{n} sang a soft song, and {p} came back.",
    "A kind old man helped {n} reach it.",
    "{n} and {f} worked together and fixed the problem.",
]

def story(rng):
    n, f = rng.sample(NAMES, 2)
    p, t, place = rng.choice(PETS), rng.choice(THINGS), rng.choice(PLACES)
    parts = [
        rng.choice(["Once upon a time, there was a little {kind} named {n}.", "One day, {n} went to {place} with {p}.", "{n} had {t} that {n} loved very much."]),
        rng.choice(WEATHER),
        rng.choice(["{n} felt {feel} and wanted to play.", "{n} saw {t} near a big tree.", "{n} met {f} and {p} at {place}."]),
        rng.choice(PROBLEMS),
        "{n} was {feel2}.",
        rng.choice(FIXES),
        rng.choice(LESSON),
    ]
    text = " ".join(parts).format(n=n, f=f, p=p, t=t, place=place, kind=rng.choice(["girl", "boy"]),
                                  feel=rng.choice(FEEL), feel2=rng.choice(["sad", "scared", "worried", "upset"]))
    return text[0].upper() + text[1:]

def write(path, count, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(count):
            out.write(json.dumps({"text": story(rng)}) + "\n")

write("tiny-stories.jsonl", 200, 20261125)
write("tiny-stories-eval.jsonl", 32, 7)
