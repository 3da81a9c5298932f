"""Varied training templates for the demo corpus: powers, percentages, prices, thousands, prose in several languages,
numbers written in words, logic connectives inside ordinary sentences, code-like and recipe-like text.

The first 14 templates (`pimoe.lm.data`) repeat one English sentence frame each; a router trained only on them learned
the frames, not the token types (issue 20: German, Russian and numbers in words scored below sending every token to
the language expert). These add the variety. Every template states at least one checkable equation or comparison, and
every one is correct. The evaluation templates live apart, in `pimoe.lm.heldout`, and share no sentence frame, name,
object or language with these (tests/test_heldout.py checks).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pimoe.lm.connectives import connective_document
from pimoe.lm.text import LOGIC_WORDS

__all__ = ["VARIED_TEMPLATES"]

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mia", "Omar")
_ITEMS = ("notebook", "lamp", "ticket", "shirt", "mug", "cable", "plant", "brush")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    """English words for 0..99 ("forty-two")."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_ONES[ones]}" if ones else "")


_GERMAN = "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf".split()
_FRENCH = "zéro un deux trois quatre cinq six sept huit neuf dix onze douze".split()
_SPANISH = "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce".split()
_RUSSIAN = "ноль один два три четыре пять шесть семь восемь девять десять одиннадцать двенадцать".split()

# Sentences without numbers, to put before or after the arithmetic: the router has to send every letter of any
# script to the language expert, and only the English connectives in LOGIC_WORDS to the logical one.
_PROSE = {
    "en": ("The morning was quiet and the street was empty.", "Rain fell on the old roof all night.",
           "She wrote a long letter to her brother.", "The train left the station on time.",
           "Nobody knew where the path would lead.", "The children laughed at the clever dog."),
    "de": ("Der Himmel war grau, und es regnete leise.", "Die Kinder spielen im Garten hinter dem Haus.",
           "Am Abend gehen wir zusammen spazieren.", "Über der Brücke fährt ein langer Zug.",
           "Mein Großvater erzählt gern Geschichten.", "Die Straße ist nach dem Sturm wieder frei."),
    "fr": ("Le soleil se lève sur la petite ville.", "Elle lit un roman près de la fenêtre.",
           "Nous avons mangé du pain frais ce matin.", "Le chat dort sur le canapé du salon.",
           "Les élèves écoutent leur professeur.", "La rivière coule lentement vers la mer."),
    "es": ("El mercado abre muy temprano los sábados.", "Mi hermana canta mientras cocina.",
           "Las montañas están cubiertas de nieve.", "El perro corre detrás de la pelota.",
           "Hoy hace calor en la ciudad.", "Los niños leen cuentos antes de dormir."),
    "ru": ("Утром в лесу было тихо и свежо.", "Мальчик читает книгу у окна.",
           "Мы долго гуляли по берегу реки.", "Зимой на улице много снега.",
           "Бабушка печёт пироги по выходным.", "Поезд пришёл на станцию вовремя."),
}


# Common English words, including look-alikes of the logic words ("the"/"then", "this"/"thus", "some"/"so", "nothing"/
# "not", "in"/"if", "android"/"and", "order"/"or"): a causal router sees a word one byte at a time, so it must learn
# which prefixes are still ambiguous, from words in free order rather than from fixed frames.
_COMMON = ("the they there these this those them their think thing thin though through throw thumb then than "
           "some someone soon sort solve song south sold so also social nothing nobody note now no not nor north "
           "in into is it its island idea iron if ifs android and hand band under or order orange other others only "
           "one all allow always almost alone none nine nice need every each even evening else elsewhere hence "
           "thus true truth truck false fall family fast because become before behind implies imply impact time "
           "tree tiny town water window winter was were with without when where which while who why walk went wish "
           "a an at as of on off to too two for from far fun fine find first friend bread brown by bus "
           "reads write wrote door road rain street small large old new good bad light dark "
           "red blue green house garden river city market teacher doctor letter paper people year day night week "
           "open close opened closed walks runs made make take took give gave keep kept said says told ask asked "
           "quiet happy slowly quickly never often today tomorrow yesterday here there maybe perhaps still again").split()
# The 100 most common English words (a standard frequency list), so everyday function words ("but", "there", "what")
# are seen in free order too.
_TOP_100 = ("the be to of and a in that have I it for not on with he as you do at this but his by from they we say "
            "her she or an will my one all would there their what so up out if about who get which go me when make "
            "can like time no just him know take people into year your good some could them see other than then now "
            "look only come its over think also back after use two how our work first well way even new want because "
            "any these give day most us").split()
_LINKS = (", ", " ", " ", " ", " ", "; ", " ")
_LOGIC = tuple(sorted(LOGIC_WORDS))


_ONSETS = ("", "b", "br", "c", "ch", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "pr", "qu", "r", "s", "sh", "st",
           "t", "th", "tr", "v", "w", "y", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "y")
# Plain codas, and the endings of logic words ("lse" of else/false, "use" of because, "hen" of then, "hus" of thus,
# "ence" of hence, "ot" of not, "nd" of and, "ll" of all, "ome" of some, "one" of none): a made-up word that ends like
# a logic word is still a language word.
_CODAS = ("", "", "d", "n", "s", "t", "ng", "st", "rt", "ck", "ed", "sed", "se", "lse", "use", "ut", "en", "hen", "us",
          "hus", "ence", "ot", "nd", "ll", "ome", "one")


def _pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word ("thuped", "brainse"): letters the router must send to the language expert
    because they are not one of LOGIC_WORDS, however much they share with one. Words that start with a logic word
    are redrawn, so that a logic word's last letter stays a reliable cue."""
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 3))) + rng.choice(_CODAS)
        if not any(word.startswith(logic) for logic in LOGIC_WORDS):
            return word


def _free_word(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.2:  # a logic word anywhere in a sentence: the word itself is the cue, not the frame around it
        word = rng.choice(_LOGIC)
        return word.upper() if rng.random() < 0.05 else word
    if draw < 0.5:
        return rng.choice(_COMMON)
    if draw < 0.72:
        return rng.choice(_TOP_100)
    return _pseudo_word(rng)


def _free_sentence(rng: random.Random) -> str:
    words = [_free_word(rng) for _ in range(rng.randint(4, 11))]
    text = words[0].capitalize()
    for word in words[1:]:
        text += rng.choice(_LINKS) + word
    return text + rng.choice((".", ".", "!", "?", ";"))


def _prose(rng: random.Random, language: str | None = None) -> str:
    return rng.choice(_PROSE[language or rng.choice(tuple(_PROSE))])


def _power(rng: random.Random, low: int, high: int) -> str:
    base, exponent = rng.randint(2, 12), rng.choice((2, 2, 3))
    op = rng.choice(("^", "^", "**"))
    power = base**exponent
    product = "*".join([str(base)] * exponent)
    frame = rng.choice((
        f"A cube with edge {base} holds {base}{op}{exponent}={power} small blocks, since {product}={power}.",
        f"{_prose(rng, 'en')} Squares and cubes: {base}{op}{exponent}={power}, because {product}={power}.",
        f"The grid is {base} wide, so the count is {base}{op}{exponent}={power}; check: {product}={power}.",
    ))
    return frame


def _percent(rng: random.Random, low: int, high: int) -> str:
    percent = rng.choice((5, 10, 12.5, 15, 20, 25, 40, 50, 75))
    whole = 8 * rng.randint(max(low, 1), max(low + 1, high))  # a multiple of 8, so every share is exact
    share = percent * whole / 100
    share_text = f"{share:g}"
    return rng.choice((
        f"A discount of {percent:g}% of {whole} is {percent:g}% of {whole}={share_text}, since {whole}*{percent:g}/100={share_text}.",
        f"The tax is {whole}*{percent:g}%={share_text}, that is {whole}*{percent:g}/100={share_text}.",
    ))


def _price(rng: random.Random, low: int, high: int) -> str:
    cents, count = rng.randint(100, 100 * max(high, 2)), rng.randint(1, 20)
    price = f"{cents // 100}.{cents % 100:02d}"
    total_cents = cents * count
    total = f"{total_cents // 100}.{total_cents % 100:02d}"
    sign, item, name = rng.choice("$€£"), rng.choice(_ITEMS), rng.choice(_NAMES)
    return rng.choice((
        f"One {item} costs {sign}{price}. {name} buys {count}, so the bill is {count}*{sign}{price}={sign}{total}, "
        f"that is {count}*{price}={total}.",
        f"Price list: {item} {sign}{price} each; {count} of them: {price}*{count}={total} in total.",
    ))


def _thousands(rng: random.Random, low: int, high: int) -> str:
    a, b = rng.randint(1000, 999_999), rng.randint(100, 99_999)
    town = rng.choice(("Northfield", "Riverton", "Lakeside", "Hillcrest"))
    return rng.choice((
        f"{town} had {a:,} residents and {b:,} moved in, so it has {a:,}+{b:,}={a + b:,} residents, i.e. {a}+{b}={a + b}.",
        f"The stadium sold {a:,} tickets and returned {min(a, b):,}: {a:,}-{min(a, b):,}={a - min(a, b):,} remain.",
    ))


def _languages(rng: random.Random, low: int, high: int) -> str:
    a, b = rng.randint(low, high), rng.randint(low, high)
    small, large = sorted((a, b))
    frames = {
        "de": f"Anna hat {a} Äpfel und kauft {b} dazu, also hat sie {a}+{b}={a + b} Äpfel.",
        "fr": f"Marie a {large} pommes et en donne {small}, donc il lui reste {large}-{small}={large - small} pommes.",
        "es": f"Carlos compra {a} cajas con {b} libros cada una: {a}*{b}={a * b} libros.",
        "ru": f"У Ивана было {a} яблок, он купил ещё {b}, значит у него {a}+{b}={a + b} яблок.",
    }
    language = rng.choice(tuple(frames))
    parts = [_prose(rng, language), frames[language]]
    rng.shuffle(parts)
    return " ".join(parts)


def _number_words(rng: random.Random, low: int, high: int) -> str:
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    small, large = sorted((a, b))
    return rng.choice((
        f"{_words(a).capitalize()} plus {_words(b)} is {_words(a + b)}, so {a}+{b}={a + b}.",
        f"{_words(large).capitalize()} minus {_words(small)} leaves {_words(large - small)}: {large}-{small}={large - small}.",
        f"{_words(a % 10).capitalize()} times {_words(b % 10)} makes {_words(a % 10 * (b % 10))}, and "
        f"{a % 10}*{b % 10}={a % 10 * (b % 10)}.",
        f"{_GERMAN[a].capitalize()} plus {_GERMAN[b]} ergibt {a + b}, also {a}+{b}={a + b}.",
        f"{_FRENCH[a].capitalize()} plus {_FRENCH[b]} font {a + b}, donc {a}+{b}={a + b}.",
        f"{_SPANISH[a].capitalize()} más {_SPANISH[b]} son {a + b}, o sea {a}+{b}={a + b}.",
        f"{_RUSSIAN[a].capitalize()} плюс {_RUSSIAN[b]} будет {a + b}, то есть {a}+{b}={a + b}.",
    ))


def _logic_prose(rng: random.Random, low: int, high: int) -> str:
    a = rng.randint(low + 1, max(low + 1, high))
    b = rng.randint(low, a - 1)
    name = rng.choice(_NAMES)
    sentence = rng.choice((
        f"If the shop is open and {name} has money, then {name} buys bread; the shop is not open, so {name} waits.",
        "Either the lamp is broken or the switch is off, and the switch is on, therefore the lamp is broken.",
        "All birds have feathers and some birds cannot fly, but not every animal with feathers is a bird.",
        f"Because the road was icy, the bus was late; hence {name} walked, and thus arrived early.",
        f"It is true that {name} reads every night, or at least {name} says so; none of us checked.",
        "The alarm rings if the door opens, else it stays silent; the door did not open, so it stayed silent.",
        "When the test passes then we ship, and if it fails we fix it, because nobody ships a broken build.",
        f"Some plans work and some do not; all of them cost time, therefore {name} picks one and implies no more.",
    ))
    return f"{sentence} {a}>{b} is true, so {a} is bigger."


_SUBJECTS = ("the cat", "my neighbour", "a farmer", "the old man", "our team", "this machine", "the river", "she",
             "he", "they", "the printer", "your sister", "the market", "every guest", "the train", "a bird")
_PREDICATES = ("sleeps", "is late", "was open", "works well", "sings loudly", "looks tired", "stays home",
               "wins the game", "breaks down", "has a key", "is empty", "goes north", "feels cold", "is ready",
               "reads the map", "knows the way", "keeps quiet", "moves slowly")
# Connective frames; LOGIC_WORDS appear where ordinary English puts them, in any case.
_CONNECTIVES = ("if {a}, then {b}", "if {a} then {b}", "{a} then {b}", "{a} thus {b}", "{a} so {b}", "{a} hence {b}",
                "{a} and then {b}", "not {a}", "{a} or not", "{a} because {b}", "{a} and {b}", "{a} or {b}", "{a}, so {b}",
                "{a}; hence {b}", "{a}, thus {b}", "{a}, therefore {b}", "{a} if {b}", "either {a} or {b}",
                "{a}, else {b}", "it is true that {a}", "it is false that {a}", "not all days {b}",
                "some say {a}", "none of us knew {a}", "all of them agree {a}", "{a} implies {b}",
                "because {a}, {b}", "{a} but not because {b}")


def _clause(rng: random.Random) -> str:
    subject, predicate = rng.choice(_SUBJECTS), rng.choice(_PREDICATES)
    if rng.random() < 0.25:
        verb, _, rest = predicate.partition(" ")
        predicate = f"does not {verb.rstrip('s')} {rest}".rstrip() if verb not in ("is", "was", "has") else \
            f"{verb} not {rest}".rstrip()
    return f"{subject} {predicate}"


def _logic_sentence(rng: random.Random) -> str:
    sentence = rng.choice(_CONNECTIVES).format(a=_clause(rng), b=_clause(rng))
    return sentence[0].upper() + sentence[1:] + rng.choice((".", ".", "!", ";"))


def _free_prose(rng: random.Random, low: int, high: int) -> str:
    a, b = rng.randint(low, high), rng.randint(low, high)
    small, large = sorted((a, b))
    # Long documents (6-12 sentences): the packed stream gives them about a quarter of all training tokens, so logic
    # words in free positions are not drowned by the fixed frames of the other templates.
    sentences = [rng.choice((_free_sentence, _logic_sentence))(rng) for _ in range(rng.randint(6, 12))]
    if rng.random() < 0.3:
        sentences.append(_prose(rng))
    fact = rng.choice((f"{a}+{b}={a + b}.", f"{large}>={small} is true.", f"{large}-{small}={large - small}.",
                       f"{small}<={large}, so it holds."))
    sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)


def _code(rng: random.Random, low: int, high: int) -> str:
    a, b, n = rng.randint(low, high), rng.randint(low, high), rng.randint(2, 30)
    return rng.choice((
        f"let area = width * height; // width {a}, height {b}: {a}*{b}={a * b}",
        f"for i in range({n}): total += {b}  # after the loop total is {n}*{b}={n * b}",
        f"if (count > {a}) {{ count = count - {a}; }} // e.g. {a + b}-{a}={b}",
        f"x = {a}\ny = {b}\nprint(x + y)  # prints {a}+{b}={a + b}",
        f"assert add({a}, {b}) == {a + b}, 'sum'  # {a}+{b}={a + b}",
    ))


def _recipe(rng: random.Random, low: int, high: int) -> str:
    flour, sugar = 50 * rng.randint(1, 10), 25 * rng.randint(1, 8)
    eggs, minutes, people = rng.randint(1, 6), 5 * rng.randint(2, 12), rng.randint(2, 8)
    return rng.choice((
        f"Mix {flour} g flour with {sugar} g sugar: {flour}+{sugar}={flour + sugar} g in the bowl. Add {eggs} eggs "
        f"and bake at 180 °C for {minutes} minutes.",
        f"For {people} people, double the recipe: 2*{flour}={2 * flour} g flour and 2*{eggs}={2 * eggs} eggs. "
        f"Stir gently, then rest the dough.",
        f"Soup: {sugar} ml cream, {eggs} onions, 1/2 tsp salt. Simmer {minutes} min; {minutes}/5={minutes // 5} "
        f"stirs, one every 5 minutes.",
    ))


def _sentence_boundary(rng: random.Random, low: int, high: int) -> str:
    a, b = rng.randint(low, high), rng.randint(low, high)
    small, large = sorted((a, b))
    lead = rng.choice(("It was late.", "Dr. Smith checked the sum.", "approx.", "Note:", "Fact!", "e.g.",
                       "The meeting on 2024-03-15 at 10:30 ended early.", "Call 555-0134 for help."))
    op, value = rng.choice((("+", a + b), ("*", a * b), (" - ", large - small)))
    left, right = (large, small) if op == " - " else (a, b)
    sign = rng.choice(("", "-")) if op != " - " else ""
    signed_value = value if not sign else (-left + right if op == "+" else -left * right)
    return f"{lead} {sign}{left}{op}{right}={signed_value}, as the table shows."


VARIED_TEMPLATES: dict[str, Callable[[random.Random, int, int], str]] = {
    "power": _power,
    "percent": _percent,
    "price": _price,
    "thousands": _thousands,
    "languages": _languages,
    "number_words": _number_words,
    "logic_prose": _logic_prose,
    "free_prose": _free_prose,
    "code": _code,
    "recipe": _recipe,
    "sentence_boundary": _sentence_boundary,
    "connectives": connective_document,
}
