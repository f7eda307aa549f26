using KvmSharp.Testing;

namespace KvmSharp.Lab.Tests;

/// <summary>
/// The public API of the KvmSharp.Lab package, checked against <c>PublicApi/KvmSharp.Lab.approved.txt</c>:
/// a change to it fails here until the approved file is updated with it (see <see cref="PublicApiApproval"/>).
/// </summary>
public class PublicApiTests
{
    [Test]
    public void PublicApi_IsTheApprovedOne()
    {
        PublicApiApproval.Verify(typeof(KvmLab).Assembly);
    }
}
