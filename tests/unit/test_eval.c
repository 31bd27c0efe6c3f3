/* Fidelity measures against hand-computed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "tb_model.h"

static void test_kl_known_values(void **state)
{
    (void)state;
    int same;
    /* p = softmax(0, ln 3) = (1/4, 3/4), q = softmax(5, 5) = (1/2, 1/2):
     * KL = 1/4 ln(1/2) + 3/4 ln(3/2) */
    float p[2] = {0.0f, (float)log(3.0)}, q[2] = {5.0f, 5.0f};
    double want = 0.25 * log(0.5) + 0.75 * log(1.5);
    assert_true(fabs(tb_eval_kl_row(p, q, 2, &same) - want) < 1e-7);
    assert_int_equal(same, 0); /* argmax 1 against the tie's lowest index 0 */
    /* a shift of all logits changes nothing: KL 0, same argmax */
    float a[4] = {1, 2, 3, -1}, b[4] = {11, 12, 13, 9};
    assert_true(fabs(tb_eval_kl_row(a, b, 4, &same)) < 1e-12);
    assert_int_equal(same, 1);
    /* KL is not symmetric: KL(q || p) = 1/2 ln(2) + 1/2 ln(2/3) */
    assert_true(fabs(tb_eval_kl_row(q, p, 2, &same) - (0.5 * log(2.0) + 0.5 * log(2.0 / 3.0))) < 1e-7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_kl_known_values)};
    return cmocka_run_group_tests_name("eval", tests, NULL, NULL);
}
