"""Extra tuning cases: paraphrased clause merges, list<->prose, a combined-answer opener."""

DESCRIPTION = (
    "Extra tuning cases for the semantic matcher (clause-level merges in paraphrase, list to "
    "prose). Used to choose moa.semantic's thresholds together with attribution_cases.json."
)
SPLIT = "tuning"

CASES = [
    {
        "id": "sleep-merge",
        "topic": "health",
        "format": "prose",
        "candidates": [
            "Keep your bedroom cool, dark and quiet. Avoid screens for an hour before bed because blue light delays melatonin.",
            "Go to bed and get up at the same time every day, even at weekends. Caffeine late in the day can keep you awake for hours.",
            "Regular exercise improves sleep quality, but a hard workout right before bed can make it harder to drop off.",
        ],
        "final": "Here's a combined answer: A fixed bedtime and wake-up time, weekends included, matters most, and the room should stay cool and dark. Put your phone away an hour before sleeping, since its light holds back melatonin. Exercise helps you sleep better; just don't train hard late in the evening. Reading a paper book in bed is a good way to wind down.",
        "labels": [
            ("merged", [1, 0]),
            ("paraphrased", [0]),
            ("paraphrased", [2]),
            ("new", []),
        ],
    },
    {
        "id": "http-list-to-prose",
        "topic": "web",
        "format": "list-to-prose",
        "candidates": [
            "- GET reads a resource and must not change it.\n- POST creates a new resource.\n- PUT replaces a resource completely.\n- DELETE removes it.",
            "GET and HEAD are safe methods. PUT and DELETE are idempotent: sending them twice has the same effect as once. POST is neither safe nor idempotent.",
        ],
        "final": "Use GET to fetch a resource without modifying it, POST to make a new one, PUT to overwrite one entirely and DELETE to get rid of it. Repeating a PUT or a DELETE leaves the server in the same state as doing it once, which is not true of POST. PATCH applies a partial update.",
        "labels": [
            ("merged", [0]),
            ("paraphrased", [1]),
            ("new", []),
        ],
    },
    {
        "id": "budget-prose-to-list",
        "topic": "finance",
        "format": "prose-to-list",
        "candidates": [
            "Start by tracking every expense for a month so you know where the money goes. Then set aside savings the day you are paid, before spending anything.",
            "A common rule is 50/30/20: half of your income for needs, 30% for wants and 20% for savings. Build an emergency fund of three to six months of expenses first.",
            "Cancel subscriptions you no longer use. Cook at home more often; eating out is where many budgets leak.",
        ],
        "final": "## A simple budget\n\n- Write down what you spend for a whole month to see where your money actually ends up.\n- Pay yourself first: move the savings on payday, before anything else.\n- Split income roughly 50/30/20 between needs, wants and savings.\n- Before investing, save an emergency cushion covering three to six months of costs.\n- Unused subscriptions and frequent restaurant meals are the usual leaks, so cut them.",
        "labels": [
            ("new", []),
            ("paraphrased", [0]),
            ("paraphrased", [0]),
            ("paraphrased", [1]),
            ("paraphrased", [1]),
            ("merged", [2]),
        ],
    },
    {
        "id": "volcano-correction",
        "topic": "science",
        "format": "prose",
        "candidates": [
            "Mount Vesuvius erupted in 79 AD and buried Pompeii and Herculaneum under ash and pumice.",
            "Vesuvius destroyed Pompeii in 89 AD. Pliny the Younger described the eruption in two letters to Tacitus.",
            "The eruption column rose over 30 kilometres, and pyroclastic flows killed those who had not fled.",
        ],
        "final": "Vesuvius erupted in 79 AD, burying Pompeii and Herculaneum in ash and pumice. An eyewitness account survives: Pliny the Younger wrote about it in two letters to Tacitus. A column of ash climbed more than 30 km into the sky, and the people who stayed were killed by pyroclastic flows. Today Vesuvius is the only active volcano on the European mainland.",
        "labels": [
            ("edited", [0]),
            ("edited", [1]),
            ("paraphrased", [2]),
            ("new", []),
        ],
    },
    {
        "id": "git-two-say-same",
        "topic": "programming",
        "format": "prose",
        "candidates": [
            "Use `git stash` to put uncommitted changes aside so you can switch branches. Bring them back with `git stash pop`.",
            "To switch branches without committing half-done work, stash it first with `git stash`, then restore it later using `git stash pop`.",
            "Alternatively commit the work in progress and amend the commit later.",
        ],
        "final": "If you need to change branches but are not ready to commit, run `git stash` to shelve your changes. Later, `git stash pop` brings them back. Stashes are kept locally and are never pushed to the remote.",
        "labels": [
            ("paraphrased", [0, 1]),
            ("paraphrased", [0, 1]),
            ("new", []),
        ],
    },
    {
        "id": "tea-merge-clauses",
        "topic": "cooking",
        "format": "prose",
        "candidates": [
            "Green tea should be brewed with water around 80 °C; boiling water makes it bitter.",
            "Steep green tea for two to three minutes only.",
            "Black tea needs fully boiling water and three to five minutes.",
        ],
        "final": "For green tea, let the water cool to about 80 °C and brew it for no more than two or three minutes; hotter water turns it bitter. Black tea, by contrast, wants water at a rolling boil and a longer steep of three to five minutes. Oolong sits in between and can be infused several times.",
        "labels": [
            ("merged", [0, 1]),
            ("paraphrased", [2]),
            ("new", []),
        ],
    },
]
